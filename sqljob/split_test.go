package sqljob_test

import (
	"context"
	"testing"
	"time"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/jobfile"
)

// Key ranges cover the whole key space however the keys repeat: a
// timestamptz key of three values, each far more often than a piece of
// ranges holds, and a bigint key with gaps and negative values, both
// split into ranges of a few rows. Every row is done once.
func TestKeyRangesCoverRepeatedAndSparseKeys(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, create string
	}{
		{"repeated timestamptz", `CREATE TABLE event (k timestamptz NOT NULL, done boolean NOT NULL DEFAULT false);
			INSERT INTO event (k) SELECT timestamptz '2026-01-01' + (g % 3) * interval '1 hour' FROM generate_series(1, 30000) g`},
		{"sparse bigint", `CREATE TABLE event (k bigint NOT NULL, done boolean NOT NULL DEFAULT false);
			INSERT INTO event (k) SELECT (g * g) - 50000 FROM generate_series(1, 3000) g;
			INSERT INTO event (k) SELECT 7 FROM generate_series(1, 2000) g`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			url := testenv.DB(t, nil)
			ctx := context.Background()
			pool := testenv.Pool(t, url)
			if _, err := pool.Exec(ctx, c.create); err != nil {
				t.Fatal(err)
			}
			f, err := jobfile.Parse("event.sql", []byte(`-- shardfill:job event-done
-- shardfill:tables event
-- shardfill:split event.k rows 10
-- shardfill:slice
UPDATE event SET done = true WHERE shardfill.in_range(k) AND NOT done;
`))
			if err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			res, err := testenv.Engine(t, url, open(t, url, f, nil), engine.Config{Concurrency: 3}).Run(rctx)
			if err != nil {
				t.Fatal(err)
			}
			var left, total int64
			if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT done), count(*) FROM event`).Scan(&left, &total); err != nil {
				t.Fatal(err)
			}
			if left != 0 || res.RowsWritten != total {
				t.Fatalf("%d of %d rows left, %d changed over %d slices: want every row done exactly once", left, total, res.RowsWritten, res.Run.SlicesTotal)
			}
		})
	}
}
