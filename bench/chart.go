package main

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Chart draws throughput (task_usage rows/s) against concurrency: shardfill
// on the main data set, the latency scenario if it ran, and limit and
// serial as horizontal references.
func (r *Report) Chart(path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("shardfill throughput, size %s", r.Size)
	p.X.Label.Text = "concurrency (--concurrency)"
	p.Y.Label.Text = "task_usage rows / s"
	p.X.Scale = plot.LogScale{}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())

	series := func(scenario, variant string) plotter.XYs {
		var xy plotter.XYs
		for _, res := range append(append([]Result{}, r.Results...), r.Scenarios...) {
			if res.Scenario == scenario && res.Variant == variant && res.Mode == ModeShardfill && res.Concurrency > 0 {
				xy = append(xy, plotter.XY{X: float64(res.Concurrency), Y: res.RowsPerSec()})
			}
		}
		return xy
	}
	main, lat, latUnbatched := series("", ""), series(ScenarioLatency, ""), series(ScenarioLatency, "unbatched")
	if len(main)+len(lat)+len(latUnbatched) == 0 {
		return fmt.Errorf("no shardfill results to chart")
	}
	lo, hi := math.Inf(1), 0.0
	for _, pt := range append(append(append(plotter.XYs{}, main...), lat...), latUnbatched...) {
		lo, hi = math.Min(lo, pt.X), math.Max(hi, pt.X)
	}
	var ticks []plot.Tick
	for c := 1.0; c <= hi*1.01; c *= 2 {
		if c >= lo/1.01 {
			ticks = append(ticks, plot.Tick{Value: c, Label: fmt.Sprint(c)})
		}
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min, p.X.Max = lo, hi
	// Headroom above the highest line keeps the legend off the data.
	top := 0.0
	for _, res := range append(append([]Result{}, r.Results...), r.Scenarios...) {
		if res.Scenario == "" || res.Scenario == ScenarioLatency {
			top = math.Max(top, res.RowsPerSec())
		}
	}
	p.Y.Min, p.Y.Max = 0, 1.4*top

	addLine := func(xy plotter.XYs, name string, c color.Color, shape draw.GlyphDrawer) error {
		if len(xy) == 0 {
			return nil
		}
		l, s, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		l.Color, l.Width = c, vg.Points(2)
		s.Color, s.Shape = c, shape
		p.Add(l, s)
		p.Legend.Add(name, l, s)
		return nil
	}
	if err := addLine(main, "shardfill", color.RGBA{R: 31, G: 119, B: 180, A: 255}, draw.CircleGlyph{}); err != nil {
		return err
	}
	if err := addLine(lat, "shardfill, latency scenario (+1 ms each way)", color.RGBA{R: 255, G: 127, B: 14, A: 255}, draw.TriangleGlyph{}); err != nil {
		return err
	}
	if err := addLine(latUnbatched, "shardfill, latency scenario, unbatched", color.RGBA{R: 148, G: 103, B: 189, A: 255}, draw.SquareGlyph{}); err != nil {
		return err
	}
	ref := func(mode, name string, c color.Color) error {
		res, ok := r.find(mode, 0)
		if !ok || len(main) == 0 {
			return nil
		}
		xy := plotter.XYs{{X: lo, Y: res.RowsPerSec()}, {X: hi, Y: res.RowsPerSec()}}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		l.Color, l.Width, l.Dashes = c, vg.Points(1.5), []vg.Length{vg.Points(6), vg.Points(4)}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (%.0f rows/s)", name, res.RowsPerSec()), l)
		return nil
	}
	if err := ref(ModeLimit, "limit: one INSERT…SELECT", color.RGBA{R: 44, G: 160, B: 44, A: 255}); err != nil {
		return err
	}
	if err := ref(ModeSerial, "serial: window function per month", color.RGBA{R: 214, G: 39, B: 40, A: 255}); err != nil {
		return err
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
