package etcd_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tvd-dev/tvd/store/etcd"
)

var urlSeeds = []string{
	"etcd://127.0.0.1:2379/tvd",
	"etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/tvd/prod/",
	"etcd://[::1]:2379/tvd",
	"etcd://etcd-0.etcd.svc.cluster.local:2379/tvd/site-a_1",
	"etcd://localhost:02379/tvd",
	"etcd://h:1/a",
	"etcd://h:65536/a",
	"etcd://h/a",
	"etcd://user:pw@h:2379/tvd",
	"http://h:2379/tvd",
	"etcd://h:2379",
	"etcd://h:2379/",
	"etcd://h:2379/a//b",
	"etcd://h:2379/a/../b",
	"etcd://h:2379/tvd?x=1",
	"etcd://[fe80::1%eth0]:2379/tvd",
	"etcd://h:2379,h:2379/tvd",
	"etcd://,h:2379/tvd",
	"etcd://[1.2.3.4]:2379/tvd",
	"etcd://-h:2379/tvd",
	"etcd://h :2379/tvd",
	"etcd://h:2379/t\xffvd",
	"",
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in        string
		endpoints []string
		prefix    string
	}{
		{"etcd://127.0.0.1:2379/tvd", []string{"127.0.0.1:2379"}, "tvd/"},
		{"etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/tvd/prod/", []string{"10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"}, "tvd/prod/"},
		{"etcd://[::1]:2379/tvd", []string{"[::1]:2379"}, "tvd/"},
		{"etcd://etcd-0.etcd.svc.cluster.local:2379/tvd/site-a_1", []string{"etcd-0.etcd.svc.cluster.local:2379"}, "tvd/site-a_1/"},
		{"etcd://localhost:02379/tvd", []string{"localhost:2379"}, "tvd/"},
	} {
		cfg, err := etcd.ParseURL(tc.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.in, err)
			continue
		}
		if !slices.Equal(cfg.Endpoints, tc.endpoints) || cfg.Prefix != tc.prefix {
			t.Errorf("ParseURL(%q) = %q %q, want %q %q", tc.in, cfg.Endpoints, cfg.Prefix, tc.endpoints, tc.prefix)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("ParseURL(%q) gives a config that does not validate: %v", tc.in, err)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "want etcd://host:port"},
		{"127.0.0.1:2379/tvd", "want etcd://host:port"},
		{"http://h:2379/tvd", `scheme "http"`},
		{"ETCD://h:2379/tvd", `scheme "ETCD"`},
		{"etcd://h:2379", "no key prefix"},
		{"etcd://h:2379/", "no key prefix"},
		{"etcd:///tvd", "no endpoints"},
		{"etcd://h/tvd", "want host:port"},
		{"etcd://h:/tvd", "no port"},
		{"etcd://h:0/tvd", "1 to 65535"},
		{"etcd://h:65536/tvd", "1 to 65535"},
		{"etcd://h:+80/tvd", "1 to 65535"},
		{"etcd://:2379/tvd", "no host"},
		{"etcd://user:pw@h:2379/tvd", "user info"},
		{"etcd://h:2379/tvd?dial=1s", "query or fragment"},
		{"etcd://h:2379/tvd#x", "query or fragment"},
		{"etcd://h:2379,h:2379/tvd", "listed twice"},
		{"etcd://h:2379,/tvd", "empty endpoint"},
		{"etcd://[fe80::1%eth0]:2379/tvd", "not an IPv6 address"},
		{"etcd://[1.2.3.4]:2379/tvd", "brackets"},
		{"etcd://[::1/tvd", "want host:port"},
		{"etcd://-h:2379/tvd", "starts or ends with '-'"},
		{"etcd://h_1:2379/tvd", "want letters, digits"},
		{"etcd://h..x:2379/tvd", "label"},
		{"etcd://h:2379/a//b", `segment ""`},
		{"etcd://h:2379/a/../b", `segment ".."`},
		{"etcd://h:2379/a b", "space or control"},
		{"etcd://h:2379/a\x00", "space or control"},
		{"etcd://h:2379/t\xffvd", "UTF-8"},
		{"etcd://h:2379/tvd/é", "character"},
		{"etcd://h:2379/" + strings.Repeat("p", etcd.MaxPrefixLen), "at most 256"},
		{"etcd://h:2379/" + strings.Repeat("p", 5000), "at most 4096"},
	} {
		_, err := etcd.ParseURL(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseURL(%.60q): error %v, want one saying %q", tc.in, err, tc.want)
		}
	}
}

// FuzzParseURL checks that ParseURL never panics, that what it accepts
// validates, and that Config.URL gives back an equal config.
func FuzzParseURL(f *testing.F) {
	for _, s := range urlSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		cfg, err := etcd.ParseURL(in)
		if err != nil {
			if len(err.Error()) > 1024 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("ParseURL(%q) accepted a config that does not validate: %v", in, err)
		}
		again, err := etcd.ParseURL(cfg.URL())
		if err != nil {
			t.Fatalf("ParseURL(%q).URL() = %q does not parse: %v", in, cfg.URL(), err)
		}
		if !slices.Equal(again.Endpoints, cfg.Endpoints) || again.Prefix != cfg.Prefix {
			t.Fatalf("round trip of %q: %+v, then %+v", in, cfg, again)
		}
	})
}
