package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// buildRevision is the VCS revision given at link time
// (-ldflags "-X main.buildRevision=..."), for builds without the
// repository's .git, such as the Dockerfile's; the build info's own
// vcs.revision wins when there is one.
var buildRevision string

// versionText is what `shardfill version` and `--version` print: the
// module version and the VCS revision the binary was built from, as the Go
// toolchain stamped them into the build info.
func versionText() string {
	bi, _ := debug.ReadBuildInfo()
	return formatVersion(bi)
}

// formatVersion renders build info (nil when the binary has none).
func formatVersion(bi *debug.BuildInfo) string {
	version, settings := "(unknown)", map[string]string{}
	if bi != nil {
		version = bi.Main.Version
		if version == "" {
			version = "(devel)"
		}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "shardfill %s\n", version)
	if settings["vcs.revision"] == "" && buildRevision != "" {
		settings["vcs.revision"] = buildRevision
	}
	if rev := settings["vcs.revision"]; rev != "" {
		if settings["vcs.modified"] == "true" {
			rev += " (modified: built with uncommitted changes)"
		}
		fmt.Fprintf(&b, "  revision   %s\n", rev)
	} else {
		fmt.Fprintf(&b, "  revision   unknown (built without VCS information)\n")
	}
	if t := settings["vcs.time"]; t != "" {
		fmt.Fprintf(&b, "  committed  %s\n", t)
	}
	fmt.Fprintf(&b, "  go         %s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return b.String()
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and the VCS revision of this binary",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), versionText())
			return err
		},
	}
}
