package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/agent/dataplane"
	"github.com/tvd-dev/tvd/agent/eehost"
	"github.com/tvd-dev/tvd/attest/tpm"
	"github.com/tvd-dev/tvd/controller"
	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/bolt"
	"github.com/tvd-dev/tvd/store/etcd"
)

func newLogger(cmd *cobra.Command, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: l})), nil
}

func newControllerCmd() *cobra.Command {
	var data, listen, storeURL, trustDomain, logLevel, ekCA string
	var hosts []string
	var memberTTL, electionTTL time.Duration
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the domain controller",
		Long: `Run the domain controller: it enrols nodes, admits their EEs into domains by the
policy, issues member identities, streams plans to the agents and records every
security-relevant act in the audit log. On first start it creates the deployment's
root CA and an admin credential in DATA/admin, and prints how to use them.`,
		Example: `  tvd controller --data /var/lib/tvd --listen 127.0.0.1:7443`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd, logLevel)
			if err != nil {
				return err
			}
			if data == "" {
				return fmt.Errorf("--data DIR is required")
			}
			var st store.Store
			switch {
			case storeURL == "" || storeURL == "bolt":
				if err := os.MkdirAll(data, 0o700); err != nil {
					return err
				}
				st, err = bolt.Open(filepath.Join(data, "state.db"), bolt.WithLogger(log))
				if err != nil {
					return err
				}
			case strings.HasPrefix(storeURL, etcd.Scheme+"://"):
				cfg, err := etcd.ParseURL(storeURL)
				if err != nil {
					return fmt.Errorf("--store: %w", err)
				}
				cfg.Logger = log
				if st, err = etcd.Open(cmd.Context(), cfg); err != nil {
					return err
				}
			default:
				return fmt.Errorf("--store %q: want bolt or etcd://HOST:PORT[,HOST:PORT...]/PREFIX", storeURL)
			}
			defer st.Close()
			var ekRoots *x509.CertPool
			if ekCA != "" {
				b, err := os.ReadFile(ekCA)
				if err != nil {
					return fmt.Errorf("--ek-ca: %w", err)
				}
				ekRoots = x509.NewCertPool()
				if !ekRoots.AppendCertsFromPEM(b) {
					return fmt.Errorf("--ek-ca %s: no PEM certificates in the file", ekCA)
				}
			}
			ctx := cmd.Context()
			cfg := controller.Config{
				DataDir: data, Store: st, Listen: listen, Hosts: hosts, TrustDomain: trustDomain,
				MemberTTL: memberTTL, Logger: log, Out: cmd.OutOrStdout(), EKRoots: ekRoots,
			}
			var lost <-chan struct{}
			if es, ok := st.(*etcd.Store); ok {
				// Replicas share the store: one leads and serves, the others
				// stand by (not listening, so agents and admins fail over to
				// the leader) until the leader's lease ends.
				fmt.Fprintf(cmd.OutOrStdout(), "controller replica %s: standing by for the leadership (etcd election, lease %v)\n", listen, electionTTL)
				lead, err := es.Campaign(ctx, "controller", listen, electionTTL)
				if err != nil {
					return err
				}
				defer lead.Resign(context.WithoutCancel(ctx))
				fmt.Fprintf(cmd.OutOrStdout(), "controller replica %s: leading\n", listen)
				lost = lead.Lost
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				go func() {
					select {
					case <-lost:
						log.Error("leadership lost: stopping this replica (its writes are fenced already)")
						cancel()
					case <-ctx.Done():
					}
				}()
				cfg.SharedStore = true
			}
			c, err := controller.New(ctx, cfg)
			if err != nil {
				return err
			}
			defer c.Close()
			err = c.Run(ctx)
			select {
			case <-lost:
				if cmd.Context().Err() == nil {
					return errors.New("lost the leadership; start again to stand by")
				}
			default:
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&data, "data", "", "state `DIR`: store, keys, audit log, first admin credential")
	f.StringVar(&listen, "listen", "127.0.0.1:7443", "`ADDR` to serve the API on")
	f.StringVar(&storeURL, "store", "bolt", "state store: bolt (DATA/state.db) or etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
	f.StringVar(&ekCA, "ek-ca", "", "PEM `FILE` of CAs trusted to certify TPM endorsement keys (TPM manufacturers, or the lab's swtpm CA)")
	f.StringVar(&trustDomain, "trust-domain", controller.DefaultTrustDomain, "SPIFFE trust domain, fixed on first start")
	f.StringSliceVar(&hosts, "host", nil, "extra `NAME` or address for the server certificate (repeatable)")
	f.DurationVar(&memberTTL, "member-ttl", controller.DefaultMemberTTL, "lifetime of member certificates")
	f.DurationVar(&electionTTL, "election-ttl", 3*time.Second, "with an etcd store: lease of the leading replica (a dead leader is replaced within about this long)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newAgentCmd() *cobra.Command {
	var ctrl, data, token, config, node, logLevel, tpmPath, underlay, eeNetNS, eeDriver, images, plane string
	var wgPort uint16
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent",
		Long: `Run the node agent: enrol the node with a one-time join token (first start only),
declare the EEs of the node configuration file, keep the plan stream open, apply plans,
report continuously and renew member certificates while they are in good standing.`,
		Example: `  tvd agent --controller https://10.0.0.1:7443 --data /var/lib/tvd-agent \
    --join-token tvd1.… --config node.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd, logLevel)
			if err != nil {
				return err
			}
			nc := &agent.NodeConfig{}
			if config != "" {
				if nc, err = agent.LoadNodeConfig(config); err != nil {
					return err
				}
			}
			if node != "" {
				nc.Node = node
			}
			if ctrl == "" {
				ctrl = os.Getenv("TVD_CONTROLLER")
			}
			cfg := agent.Config{Controller: ctrl, DataDir: data, JoinToken: token, Node: nc, Logger: log, ReportEvery: every}
			if tpmPath != "" {
				t, err := openTPM(tpmPath, log)
				if err != nil {
					return err
				}
				defer t.Close()
				cfg.TPM = t
			}
			var ag *agent.Agent
			var host *eehost.Host
			if eeDriver != "" {
				eeDir, err := filepath.Abs(filepath.Join(data, "ee"))
				if err != nil {
					return err
				}
				drv, err := eehost.NewDriver(eeDriver, eeDir, log)
				if err != nil {
					return err
				}
				host, err = eehost.New(eehost.Config{Driver: drv, Images: images, DataDir: eeDir, Logger: log,
					Command: func(e agent.EEConfig) []string { return e.Command },
					Measure: func(ee, p string, d [32]byte) error { return ag.Measure(ee, p, d) }})
				if err != nil {
					return err
				}
				defer host.Close()
				cfg.EEs = host
			}
			if underlay != "" {
				netns := func(ee string) (string, bool) {
					p := filepath.Join(eeNetNS, ee)
					_, err := os.Stat(p)
					return p, err == nil
				}
				if host != nil {
					netns = host.NetNS
				}
				kind, err := dataPlaneKind(plane, eeDriver)
				if err != nil {
					return err
				}
				dp, err := newDataPlane(kind, ctrl, data, underlay, wgPort, netns, nc, log)
				if err != nil {
					return err
				}
				defer dp.Close()
				cfg.DataPlane = dp
			}
			ag, err = agent.New(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return ag.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&ctrl, "controller", "", "controller `URL` (https://HOST:PORT), or the replicas' URLs separated by commas (the agent fails over between them); default $TVD_CONTROLLER")
	f.StringVar(&data, "data", "", "agent state `DIR`: keys, certificates, last plan")
	f.StringVar(&token, "join-token", "", "one-time join `TOKEN` from tvd admin token (first start only)")
	f.StringVar(&config, "config", "", "node configuration `FILE`: node name and EEs")
	f.StringVar(&node, "node", "", "node `NAME` (default: from the config file, else the host name)")
	f.DurationVar(&every, "report-every", 5*time.Second, "longest time between reports")
	f.StringVar(&underlay, "underlay", "", "this node's underlay `ADDR`: runs the data plane (WireGuard overlay per domain, EE links, nftables flow rules); empty: identities only")
	f.Uint16Var(&wgPort, "wg-port", dataplane.DefaultBasePort, "first UDP `PORT` of the per-domain WireGuard interfaces (0 with the userspace data plane: ports chosen by the system, not kept across restarts)")
	f.StringVar(&plane, "dataplane", "auto", "data plane `KIND` (with --underlay): kernel (TUN devices, veths, nftables; root), userspace (wireguard-go over a userspace network stack per EE, flow filter in the agent, no root; EEs use their overlay socket and exposed ports), or auto (userspace with --ee-driver process or without root, else kernel)")
	f.StringVar(&eeNetNS, "ee-netns", "/run/netns", "`DIR` holding each EE's network namespace, named by the EE (without --ee-driver)")
	f.StringVar(&eeDriver, "ee-driver", "", "run the node's EEs: linux (namespaces, overlayfs, cgroups, exec monitor; root) or process (weak isolation, execs not measured); empty: no EEs")
	f.StringVar(&images, "images", "", "`DIR` of EE images by name (an EE's image may also be an absolute path, a sha256: digest, or empty for the busybox base image)")
	f.StringVar(&tpmPath, "tpm", "", "TPM to attest with: /dev/tpmrm0, unix:PATH or tcp:HOST:PORT (swtpm); empty: join token only (implicit assurance)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// openTPM opens the TPM named by a --tpm value.
func openTPM(spec string, log *slog.Logger) (*tpm.TPM, error) {
	var t *tpm.TPM
	var err error
	switch {
	case strings.HasPrefix(spec, "unix:"):
		t, err = tpm.OpenSocket("unix", strings.TrimPrefix(spec, "unix:"), log)
	case strings.HasPrefix(spec, "tcp:"):
		t, err = tpm.OpenSocket("tcp", strings.TrimPrefix(spec, "tcp:"), log)
	case strings.HasPrefix(spec, "/"):
		t, err = tpm.OpenDevice(spec, log)
	default:
		return nil, fmt.Errorf("--tpm %q: want a device path, unix:PATH or tcp:HOST:PORT", spec)
	}
	if err != nil {
		return nil, fmt.Errorf("--tpm %s: %w", spec, err)
	}
	return t, nil
}

// Data plane kinds (--dataplane).
const (
	planeKernel    = "kernel"
	planeUserspace = "userspace"
)

// dataPlaneKind resolves --dataplane: auto picks the userspace data plane
// for the process driver (its EEs have no network namespace to attach)
// and for an agent without root (it can create no devices).
func dataPlaneKind(flag, eeDriver string) (string, error) {
	switch flag {
	case planeKernel, planeUserspace:
		return flag, nil
	case "", "auto":
		if eeDriver == eehost.DriverProcess || os.Geteuid() != 0 {
			return planeUserspace, nil
		}
		return planeKernel, nil
	}
	return "", fmt.Errorf("--dataplane %q: want kernel, userspace or auto", flag)
}

// newDataPlane builds the node's data plane for the agent.
func newDataPlane(kind, controllerURL, data, underlay string, port uint16, eeNetNS func(string) (string, bool), nc *agent.NodeConfig, log *slog.Logger) (agent.DataPlane, error) {
	u, err := netip.ParseAddr(underlay)
	if err != nil {
		return nil, fmt.Errorf("--underlay %q: want an IP address", underlay)
	}
	var ctrl []netip.Addr
	if pu, err := url.Parse(controllerURL); err == nil {
		if a, err := netip.ParseAddr(pu.Hostname()); err == nil {
			ctrl = append(ctrl, a)
		} else if addrs, err := net.LookupHost(pu.Hostname()); err == nil {
			for _, s := range addrs {
				if a, err := netip.ParseAddr(s); err == nil {
					ctrl = append(ctrl, a)
				}
			}
		}
	}
	if kind == planeUserspace {
		expose := map[string][]dataplane.Expose{}
		for _, e := range nc.EEs {
			for _, x := range e.Expose {
				expose[e.Name] = append(expose[e.Name], dataplane.Expose{Port: x.Port, Target: x.Target})
			}
		}
		log.Info("data plane: userspace (wireguard-go over a userspace network stack per EE; flow filter in the agent)")
		return dataplane.NewUserspace(dataplane.UserspaceConfig{
			Underlay: u, BasePort: port, DataDir: data, Controller: ctrl, Logger: log,
			Expose: func(ee string) []dataplane.Expose { return expose[ee] },
		})
	}
	return dataplane.New(dataplane.Config{
		Underlay: u, BasePort: port, DataDir: data, Controller: ctrl, Logger: log, EENetNS: eeNetNS,
	})
}
