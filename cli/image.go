package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tvd-dev/tvd/ee/image"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build and verify EE images"}
	var out, busybox string
	var base bool
	build := &cobra.Command{
		Use:   "build DIR -o IMAGE",
		Short: "Turn a directory into an EE image: the tree plus a manifest with every file's SHA-256",
		Long: `build copies DIR into IMAGE/rootfs and writes IMAGE/manifest.json listing every file, directory
and link with its mode, size and SHA-256. The image digest (SHA-256 of the canonical manifest) is
what an EE's start is measured as. With --base it builds the small base image from Debian's
busybox-static instead of a directory.`,
		Example: `  tvd image build ./rootfs -o /var/lib/tvd/images/console
  tvd image build --base -o /var/lib/tvd/images/base`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return fmt.Errorf("-o IMAGE is required")
			}
			var m image.Manifest
			var err error
			switch {
			case base && len(args) == 0:
				m, err = image.BuildBase(busybox, out)
			case !base && len(args) == 1:
				m, err = image.Build(args[0], out)
			default:
				return fmt.Errorf("image build takes DIR, or --base without DIR")
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d files, image %s\n", out, len(m.Files), m.Digest())
			return nil
		},
	}
	build.Flags().StringVarP(&out, "output", "o", "", "image `DIR` to write")
	build.Flags().BoolVar(&base, "base", false, "build the busybox base image")
	build.Flags().StringVar(&busybox, "busybox", "", "static busybox `FILE` for --base (default /bin/busybox)")
	verify := &cobra.Command{
		Use:   "verify IMAGE",
		Short: "Re-hash an image against its manifest and report every difference",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := image.Open(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: verified, image %s\n", args[0], img.Digest)
			return nil
		},
	}
	cmd.AddCommand(build, verify)
	return cmd
}
