package admin

import "net/http"

// The member self-service page at /me (issue 5, item 3).

// routeMember registers the member page on mux.
func (s *server) routeMember(mux *http.ServeMux) {}
