package etcd

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Scheme is the URL scheme of the etcd backend in the controller's --store
// flag.
const Scheme = "etcd"

// maxURLLen bounds the flag form, so a parser error never echoes a huge
// input.
const maxURLLen = 4096

// ParseURL parses the controller's flag form of an etcd backend,
//
//	etcd://host:port[,host:port...]/prefix[/segment...]
//
// into a Config with Endpoints and Prefix set (Prefix gets a trailing '/'
// if the URL has none). Hosts are DNS names, IPv4 addresses or bracketed
// IPv6 addresses; the port is required. The URL carries no credentials,
// query or fragment: TLS and timeouts are set on the Config.
func ParseURL(raw string) (Config, error) {
	if len(raw) > maxURLLen {
		return Config{}, fmt.Errorf("etcd URL is %d bytes: want at most %d", len(raw), maxURLLen)
	}
	if !utf8.ValidString(raw) {
		return Config{}, fmt.Errorf("etcd URL %.64q is not valid UTF-8", raw)
	}
	for _, r := range raw {
		if r <= ' ' || r == 0x7f {
			return Config{}, fmt.Errorf("etcd URL %.64q contains a space or control character", raw)
		}
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return Config{}, fmt.Errorf("etcd URL %.64q: want %s://host:port[,host:port...]/prefix", raw, Scheme)
	}
	if scheme != Scheme {
		return Config{}, fmt.Errorf("etcd URL %.64q: scheme %.64q: want %.64q", raw, scheme, Scheme)
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		return Config{}, fmt.Errorf("etcd URL %.64q: query or fragment %.64q: want none (set options on the config)", raw, rest[i:])
	}
	hosts, path, ok := strings.Cut(rest, "/")
	if !ok || path == "" || path == "/" {
		return Config{}, fmt.Errorf("etcd URL %.64q has no key prefix: want %s://host:port/prefix", raw, Scheme)
	}
	if strings.Contains(hosts, "@") {
		return Config{}, fmt.Errorf("etcd URL %.64q: user info is not supported: authenticate with a TLS client certificate", raw)
	}
	if hosts == "" {
		return Config{}, fmt.Errorf("etcd URL %.64q has no endpoints: want host:port before the prefix", raw)
	}
	var cfg Config
	seen := map[string]bool{}
	for i, h := range strings.Split(hosts, ",") {
		ep, err := parseEndpoint(h)
		if err != nil {
			return Config{}, fmt.Errorf("etcd URL %.64q: endpoint %d: %w", raw, i, err)
		}
		if seen[ep] {
			return Config{}, fmt.Errorf("etcd URL %.64q: endpoint %.64q is listed twice", raw, h)
		}
		seen[ep] = true
		cfg.Endpoints = append(cfg.Endpoints, ep)
	}
	if !strings.HasSuffix(path, "/") {
		path += "/"
	}
	if err := validatePrefix(path); err != nil {
		return Config{}, fmt.Errorf("etcd URL %.64q: %w", raw, err)
	}
	cfg.Prefix = path
	return cfg, nil
}

// URL returns the configuration's flag form, the inverse of ParseURL. It
// shows only Endpoints and Prefix.
func (c Config) URL() string {
	return Scheme + "://" + strings.Join(c.Endpoints, ",") + "/" + strings.TrimSuffix(c.Prefix, "/")
}

// parseEndpoint checks one "host:port" and returns it in canonical form
// (IPv6 hosts bracketed).
func parseEndpoint(ep string) (string, error) {
	if ep == "" {
		return "", errors.New("empty endpoint: want host:port")
	}
	if strings.Contains(ep, "://") {
		return "", fmt.Errorf("endpoint %.64q has a scheme: want host:port (TLS is set separately)", ep)
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		// Name only the reason: the AddrError repeats the whole input.
		reason := err.Error()
		if ae, ok := err.(*net.AddrError); ok {
			reason = ae.Err
		}
		return "", fmt.Errorf("endpoint %.64q: want host:port: %s", ep, reason)
	}
	if host == "" {
		return "", fmt.Errorf("endpoint %.64q has no host: want host:port", ep)
	}
	port, err = checkPort(port)
	if err != nil {
		return "", fmt.Errorf("endpoint %.64q: %w", ep, err)
	}
	if strings.Contains(host, ":") {
		// SplitHostPort accepts a host with colons only in brackets.
		if net.ParseIP(host) == nil {
			return "", fmt.Errorf("endpoint %.64q: host %.64q is not an IPv6 address (zones are not supported)", ep, host)
		}
		return net.JoinHostPort(host, port), nil
	}
	if strings.HasPrefix(ep, "[") {
		return "", fmt.Errorf("endpoint %.64q: brackets hold only IPv6 addresses", ep)
	}
	if err := checkHostname(host); err != nil {
		return "", fmt.Errorf("endpoint %.64q: %w", ep, err)
	}
	return net.JoinHostPort(host, port), nil
}

// checkPort returns the port in canonical form (no leading zeros).
func checkPort(port string) (string, error) {
	if port == "" {
		return "", errors.New("no port: want host:port")
	}
	if len(port) > 5 || strings.TrimLeft(port, "0123456789") != "" {
		return "", fmt.Errorf("port %.64q: want a number from 1 to 65535", port)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("port %.64q: want a number from 1 to 65535", port)
	}
	return strconv.Itoa(n), nil
}

// checkHostname accepts a DNS name or an IPv4 address: dot-separated labels
// of letters, digits and inner hyphens, 1 to 63 bytes each, 253 in all.
func checkHostname(host string) error {
	if len(host) > 253 {
		return fmt.Errorf("host %.32q... is %d bytes: want at most 253", host, len(host))
	}
	for label := range strings.SplitSeq(host, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %.64q: label %.64q: want 1 to 63 letters, digits or hyphens", host, label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %.64q: label %.64q starts or ends with '-'", host, label)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isAlnum(c) && c != '-' {
				return fmt.Errorf("host %.64q: character %.64q: want letters, digits, '-' and '.'", host, c)
			}
		}
	}
	return nil
}

// validatePrefix accepts one or more segments of letters, digits, '.', '_'
// and '-' (not "." or ".."), each followed by '/'.
func validatePrefix(p string) error {
	if p == "" {
		return errors.New(`empty key prefix: want one like "tvd/prod/", so deployments sharing a cluster stay apart`)
	}
	if len(p) > MaxPrefixLen {
		return fmt.Errorf("key prefix %.32q... is %d bytes: want at most %d", p, len(p), MaxPrefixLen)
	}
	if !strings.HasSuffix(p, "/") {
		return fmt.Errorf("key prefix %.64q must end in '/'", p)
	}
	for seg := range strings.SplitSeq(strings.TrimSuffix(p, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("key prefix %.64q: segment %.64q: want a name of letters, digits, '.', '_' or '-'", p, seg)
		}
		for i := 0; i < len(seg); i++ {
			if c := seg[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
				return fmt.Errorf("key prefix %.64q: character %.64q: want letters, digits, '.', '_', '-' and '/'", p, c)
			}
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
