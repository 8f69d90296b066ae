// Package conf is a schema for configdoc's own tests.
package conf

// Config is the whole file.
type Config struct {
	Server  Server           `toml:"server"`
	Peers   map[string]*Peer `toml:"peers"`
	Extra   *Extra           `toml:"extra"`
	Untyped string
	Skipped string `toml:"-"`
	hidden  string
}

// Server holds listeners.
type Server struct {
	// Addr is the listen address. Default ":1". Required.
	Addr *string `toml:"addr,omitempty"`
	// Cert and Key are a pair. Optional.
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
	// Wait is how long. Default 5s; e.g. 1m. Zero means the default.
	Wait Duration `toml:"wait"`
	// Pairs are more pairs.
	Pairs []Pair `toml:"pairs"`
	// Member is a nested listener.
	Member Listener `toml:"member"`
	Lonely int      `toml:"lonely"`
}

// Pair is one pair.
type Pair struct {
	// A and B are numbers. Default 1.
	A, B int
}

// Listener is a nested table.
type Listener struct {
	// On says it listens. Default false.
	On bool `toml:"on"`
	// Rate is a float.
	Rate float64 `toml:"rate"`
	// Names are names.
	Names []string `toml:"names"`
}

// Peer is one peer.
type Peer struct {
	// Name is set by Load.
	Name string `toml:"-"`
	// URL is where. Default "x|y".
	URL string `toml:"url"`
}

// Extra is a pointer table.
type Extra struct {
	// Level is a level.
	Level string `toml:"level"`
}

// Duration is a Go duration string.
type Duration int64
