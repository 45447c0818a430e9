// Package web is the controller's dashboard: server-rendered pages under
// /ui/ that show the domains, their members and trust state, the flow
// matrix as a grid, each domain's compliance matrix (package report), a
// live audit event feed, and the audit log's latest checkpoint with a
// button that verifies it in the browser (signature and consistency with
// the checkpoint the browser verified before) against a verifier key the
// browser pins on first use.
//
// The assets are embedded. Who may look is decided by an administrator
// identity: a client certificate the TLS layer verified (Config.Identify),
// or a session cookie obtained by redeeming a short-lived login token that
// the controller minted for a certificate holder ([Tokens]). A viewer sees
// only the domains its role may read: an auditor of one domain (the
// customer's CIO) sees that domain and nothing of the others but what its
// own domain's flow rules name.
//
// The package reads its data through [Source]; it holds no state but the
// token key.
package web

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tvd-dev/tvd/report"
)

// Prefix is where the dashboard is mounted.
const Prefix = "/ui/"

const cookieName = "tvd_session"

//go:embed assets
var assets embed.FS

// Source gives the dashboard its data. Every method filters by what the
// viewer's role may read and fails with ErrDenied for a domain it may not.
type Source interface {
	// Overview returns the domains, members and flow rules.
	Overview(ctx context.Context, v Viewer) (*Overview, error)
	// Report returns the compliance report of one domain.
	Report(ctx context.Context, v Viewer, domain string) (*report.Report, error)
	// Events returns up to limit audit entries of the domain ("" for
	// every domain the viewer may read) in index order: those after index
	// after, or the latest limit ones if after is negative.
	Events(ctx context.Context, v Viewer, domain string, after int64, limit int) ([]Event, error)
	// Checkpoint returns the latest signed checkpoint and, if oldSize is
	// between 1 and its size, a consistency proof from oldSize.
	Checkpoint(ctx context.Context, v Viewer, oldSize uint64) (*CheckpointProof, error)
}

// ErrDenied is what a Source returns for something the viewer may not
// read.
var ErrDenied = errors.New("permission denied")

// Overview is the deployment as one viewer may see it.
type Overview struct {
	TrustDomain   string       `json:"trustDomain"`
	PolicyVersion uint64       `json:"policyVersion"`
	Domains       []DomainInfo `json:"domains"`
	Members       []MemberInfo `json:"members"`
	Flows         []FlowRule   `json:"flows"`
}

// DomainInfo summarises one domain.
type DomainInfo struct {
	Name        string `json:"name"`
	Owner       string `json:"owner"`
	Members     int    `json:"members"`
	Verified    int    `json:"verified"`
	Violated    int    `json:"violated"`
	Unknown     int    `json:"unknown"`
	Quarantined int    `json:"quarantined"`
}

// MemberInfo is one member's trust state.
type MemberInfo struct {
	Domain       string    `json:"domain"`
	Role         string    `json:"role"`
	EE           string    `json:"ee"`
	Node         string    `json:"node"`
	Status       string    `json:"status"`
	Reason       string    `json:"reason,omitempty"`
	LastVerified time.Time `json:"lastVerified,omitzero"`
	Quarantined  bool      `json:"quarantined,omitempty"`
	Frozen       bool      `json:"frozen,omitempty"`
}

// FlowRule is one cross-domain cell that lets something through: from a
// domain's role to a destination domain.
type FlowRule struct {
	FromDomain string   `json:"fromDomain"`
	FromRole   string   `json:"fromRole"`
	To         string   `json:"to"`
	Rule       string   `json:"rule"`
	Roles      []string `json:"roles,omitempty"`
}

// Event is one audit entry.
type Event struct {
	Index   uint64            `json:"index"`
	Time    time.Time         `json:"time"`
	Kind    string            `json:"kind"`
	Domain  string            `json:"domain,omitempty"`
	Actor   string            `json:"actor,omitempty"`
	Subject string            `json:"subject,omitempty"`
	Detail  map[string]string `json:"detail,omitempty"`
}

// CheckpointProof is what the browser verifies.
type CheckpointProof struct {
	// Signed is the latest signed checkpoint (a C2SP signed note).
	Signed string `json:"signed"`
	// VerifierKey is the log's note verifier key.
	VerifierKey string `json:"verifierKey"`
	// OldSize and Consistency prove the log at the latest size extends
	// the log at OldSize (RFC 9162); empty if not asked for.
	OldSize     uint64   `json:"oldSize,omitempty"`
	Consistency [][]byte `json:"consistency,omitempty"`
}

// Config configures a Handler.
type Config struct {
	Source Source
	Tokens *Tokens
	// Identify returns the administrator a request's verified client
	// certificate names, if any.
	Identify func(*http.Request) (Viewer, bool)
	Logger   *slog.Logger
	Now      func() time.Time
}

// Handler serves the dashboard under Prefix.
type Handler struct {
	cfg   Config
	mux   *http.ServeMux
	pages *template.Template
}

// NewHandler returns the dashboard handler.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.Source == nil || cfg.Tokens == nil {
		return nil, errors.New("web: Source and Tokens are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Identify == nil {
		cfg.Identify = func(*http.Request) (Viewer, bool) { return Viewer{}, false }
	}
	pages, err := template.New("pages").Funcs(template.FuncMap{
		"when": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return t.UTC().Format(time.RFC3339)
		},
		"dict": func(kv ...any) (map[string]any, error) {
			if len(kv)%2 != 0 {
				return nil, errors.New("dict: odd number of arguments")
			}
			m := map[string]any{}
			for i := 0; i < len(kv); i += 2 {
				k, ok := kv[i].(string)
				if !ok {
					return nil, errors.New("dict: keys must be strings")
				}
				m[k] = kv[i+1]
			}
			return m, nil
		},
	}).ParseFS(assets, "assets/*.tmpl")
	if err != nil {
		return nil, fmt.Errorf("web: templates: %w", err)
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux(), pages: pages}
	static, _ := fs.Sub(assets, "assets/static")
	h.mux.Handle("GET "+Prefix+"static/", http.StripPrefix(Prefix+"static/", http.FileServerFS(static)))
	h.mux.HandleFunc("GET "+Prefix+"login", h.login)
	h.mux.HandleFunc("POST "+Prefix+"logout", h.logout)
	h.mux.HandleFunc("GET "+Prefix+"{$}", h.auth(h.overview))
	h.mux.HandleFunc("GET "+Prefix+"domain/{name}", h.auth(h.domain))
	h.mux.HandleFunc("GET "+Prefix+"api/overview", h.auth(h.apiOverview))
	h.mux.HandleFunc("GET "+Prefix+"api/report/{name}", h.auth(h.apiReport))
	h.mux.HandleFunc("GET "+Prefix+"api/events", h.auth(h.apiEvents))
	h.mux.HandleFunc("GET "+Prefix+"api/checkpoint", h.auth(h.apiCheckpoint))
	return h, nil
}

// ServeHTTP serves a dashboard request with security headers.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	h.mux.ServeHTTP(w, r)
}

// auth finds the viewer (client certificate, else session cookie) or
// answers 401 with how to log in.
func (h *Handler) auth(next func(http.ResponseWriter, *http.Request, Viewer)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, ok := h.cfg.Identify(r)
		if !ok {
			if c, err := r.Cookie(cookieName); err == nil {
				v, err = h.cfg.Tokens.session(c.Value)
				ok = err == nil
			}
		}
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			h.render(w, "login.tmpl", map[string]any{"Message": "Log in with a token from `tvd admin login`, or present an admin client certificate."})
			return
		}
		next(w, r, v)
	}
}

func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	v, err := h.cfg.Tokens.redeemLogin(r.URL.Query().Get("token"))
	if err != nil {
		w.WriteHeader(http.StatusUnauthorized)
		h.render(w, "login.tmpl", map[string]any{"Message": "That login token is invalid, expired or already used. Get a new one with `tvd admin login`."})
		return
	}
	h.cfg.Logger.InfoContext(r.Context(), "dashboard login", "viewer", v.ID, "role", v.Role.String())
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: h.cfg.Tokens.mintSession(v), Path: Prefix, MaxAge: int(SessionTTL / time.Second),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
}

// safeNext returns where to go after login: a dashboard path, never
// another site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.ContainsAny(next, "\\\r\n") || strings.Contains(next, "//") {
		return Prefix
	}
	return next
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: Prefix, MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

func (h *Handler) render(w http.ResponseWriter, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := h.pages.ExecuteTemplate(w, name, data); err != nil {
		h.cfg.Logger.Error("dashboard render", "page", name, "err", err)
	}
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, what string, err error) {
	if errors.Is(err, ErrDenied) {
		http.Error(w, "permission denied", http.StatusForbidden)
		return
	}
	h.cfg.Logger.ErrorContext(r.Context(), "dashboard", "what", what, "err", err)
	http.Error(w, what+": internal error", http.StatusInternalServerError)
}

// grid is the flow matrix as rows of source classes × destination
// domains.
type grid struct {
	Domains []string
	Rows    []gridRow
}

type gridRow struct {
	Domain, Role string
	Cells        []gridCell
}

type gridCell struct {
	Rule  string
	Title string
}

// flowGrid lays the rules out; cells without a rule are none, the own
// domain is intra (always allowed, encrypted).
func flowGrid(ov *Overview) grid {
	doms := map[string]bool{}
	classes := map[[2]string]bool{}
	for _, d := range ov.Domains {
		doms[d.Name] = true
	}
	for _, m := range ov.Members {
		classes[[2]string{m.Domain, m.Role}] = true
	}
	rules := map[[3]string]FlowRule{}
	for _, f := range ov.Flows {
		doms[f.FromDomain], doms[f.To] = true, true
		classes[[2]string{f.FromDomain, f.FromRole}] = true
		rules[[3]string{f.FromDomain, f.FromRole, f.To}] = f
	}
	var g grid
	for d := range doms {
		g.Domains = append(g.Domains, d)
	}
	sort.Strings(g.Domains)
	var keys [][2]string
	for k := range classes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return keys[i][0] < keys[j][0]
		}
		return keys[i][1] < keys[j][1]
	})
	for _, k := range keys {
		row := gridRow{Domain: k[0], Role: k[1]}
		for _, to := range g.Domains {
			c := gridCell{Rule: "none", Title: k[0] + "/" + k[1] + " → " + to + ": none"}
			if to == k[0] {
				c = gridCell{Rule: "intra", Title: "intra-domain: allowed, always on the encrypted overlay"}
			} else if f, ok := rules[[3]string{k[0], k[1], to}]; ok {
				c.Rule, c.Title = f.Rule, k[0]+"/"+k[1]+" → "+to+": "+f.Rule
				if len(f.Roles) > 0 {
					c.Title += " (to " + strings.Join(f.Roles, ", ") + ")"
				}
			}
			row.Cells = append(row.Cells, c)
		}
		g.Rows = append(g.Rows, row)
	}
	return g
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request, v Viewer) {
	ov, err := h.cfg.Source.Overview(r.Context(), v)
	if err != nil {
		h.fail(w, r, "overview", err)
		return
	}
	h.render(w, "overview.tmpl", map[string]any{"Viewer": v, "Role": v.Role.String(), "O": ov, "Grid": flowGrid(ov)})
}

func (h *Handler) domain(w http.ResponseWriter, r *http.Request, v Viewer) {
	name := r.PathValue("name")
	if !v.Role.CanRead(name) {
		h.fail(w, r, "domain", ErrDenied)
		return
	}
	ov, err := h.cfg.Source.Overview(r.Context(), v)
	if err != nil {
		h.fail(w, r, "domain", err)
		return
	}
	var dom *DomainInfo
	for i := range ov.Domains {
		if ov.Domains[i].Name == name {
			dom = &ov.Domains[i]
		}
	}
	if dom == nil {
		http.NotFound(w, r)
		return
	}
	var members []MemberInfo
	for _, m := range ov.Members {
		if m.Domain == name {
			members = append(members, m)
		}
	}
	rep, err := h.cfg.Source.Report(r.Context(), v, name)
	if err != nil {
		h.fail(w, r, "report", err)
		return
	}
	matrix, err := rep.HTMLMatrix()
	if err != nil {
		h.fail(w, r, "report", err)
		return
	}
	h.render(w, "domain.tmpl", map[string]any{"Viewer": v, "Role": v.Role.String(), "O": ov, "D": dom, "Members": members,
		"Matrix": matrix, "Report": rep, "Grid": flowGrid(ov), "AutoVerify": r.URL.Query().Get("verify") == "1"})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (h *Handler) apiOverview(w http.ResponseWriter, r *http.Request, v Viewer) {
	ov, err := h.cfg.Source.Overview(r.Context(), v)
	if err != nil {
		h.fail(w, r, "overview", err)
		return
	}
	writeJSON(w, ov)
}

func (h *Handler) apiReport(w http.ResponseWriter, r *http.Request, v Viewer) {
	name := r.PathValue("name")
	if !v.Role.CanRead(name) {
		h.fail(w, r, "report", ErrDenied)
		return
	}
	rep, err := h.cfg.Source.Report(r.Context(), v, name)
	if err != nil {
		h.fail(w, r, "report", err)
		return
	}
	writeJSON(w, rep)
}

// maxEvents bounds one events request.
const maxEvents = 200

func (h *Handler) apiEvents(w http.ResponseWriter, r *http.Request, v Viewer) {
	q := r.URL.Query()
	dom := q.Get("domain")
	if dom != "" && !v.Role.CanRead(dom) {
		h.fail(w, r, "events", ErrDenied)
		return
	}
	after := int64(-1)
	if s := q.Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < -1 {
			http.Error(w, "after: want an audit index or -1", http.StatusBadRequest)
			return
		}
		after = n
	}
	limit := maxEvents
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > maxEvents {
			http.Error(w, fmt.Sprintf("limit: want 1 to %d", maxEvents), http.StatusBadRequest)
			return
		}
		limit = n
	}
	evs, err := h.cfg.Source.Events(r.Context(), v, dom, after, limit)
	if err != nil {
		h.fail(w, r, "events", err)
		return
	}
	if evs == nil {
		evs = []Event{}
	}
	writeJSON(w, evs)
}

func (h *Handler) apiCheckpoint(w http.ResponseWriter, r *http.Request, v Viewer) {
	var old uint64
	if s := r.URL.Query().Get("old"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			http.Error(w, "old: want a tree size", http.StatusBadRequest)
			return
		}
		old = n
	}
	cp, err := h.cfg.Source.Checkpoint(r.Context(), v, old)
	if err != nil {
		h.fail(w, r, "checkpoint", err)
		return
	}
	writeJSON(w, cp)
}
