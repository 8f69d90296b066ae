package admin

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
)

// The status page at / (issue 5, item 2).

//go:embed page.html
var pageHTML string

var pageTemplate = template.Must(template.New("page").Parse(pageHTML))

// routePage registers the status page and its assets on mux.
func (s *server) routePage(mux *http.ServeMux) {
	mux.Handle("GET /{$}", s.serve(s.getPage))
	mux.Handle("/{$}", s.notAllowed("GET"))
}

// routePageAPI registers the API routes the status page needs beyond the
// contract's (under /api/v1, behind the token).
func (s *server) routePageAPI(api *http.ServeMux) {}

func (s *server) getPage(w http.ResponseWriter, r *http.Request) error {
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, s.Router.Domains()); err != nil {
		return fmt.Errorf("render the status page: %w", err)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, err := w.Write(buf.Bytes())
	return err
}
