package mutf7

import (
	"testing"
	"unicode/utf8"
)

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct{ plain, enc string }{
		{"INBOX", "INBOX"},
		{"Pratiche/Città", "Pratiche/Citt&AOA-"},
		{"R&D", "R&-D"},
		{"Posta inviata", "Posta inviata"},
		{"日本語", "&ZeVnLIqe-"},
		{"~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"}, // RFC 3501 section 5.1.3
	} {
		if got := Encode(tc.plain); got != tc.enc {
			t.Errorf("Encode(%q) = %q, want %q", tc.plain, got, tc.enc)
		}
		if got := Decode(tc.enc); got != tc.plain {
			t.Errorf("Decode(%q) = %q, want %q", tc.enc, got, tc.plain)
		}
	}
	for _, bad := range []string{"&", "a&bc", "&!!-", "&AOA"} {
		if got := Decode(bad); got != bad {
			t.Errorf("Decode(%q) = %q, want it unchanged", bad, got)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("Pratiche/Citt&AOA-")
	f.Add("&-")
	f.Add("日本語 & R&D")
	f.Fuzz(func(t *testing.T, s string) {
		// Any input decodes without a panic; an input that decodes and
		// is encoded again as it came decodes to the same name.
		d := Decode(s)
		if Encode(d) == s && Decode(Encode(d)) != d {
			t.Errorf("round trip of %q broke", s)
		}
		// Any name (valid UTF-8) survives Encode then Decode, and is
		// encoded as printable ASCII.
		if !utf8.ValidString(s) {
			return
		}
		e := Encode(s)
		if got := Decode(e); got != s {
			t.Errorf("Decode(Encode(%q)) = %q (encoded %q)", s, got, e)
		}
		for i := 0; i < len(e); i++ {
			if e[i] < 0x20 || e[i] > 0x7e {
				t.Errorf("Encode(%q) = %q holds byte %#x", s, e, e[i])
				break
			}
		}
	})
}

// The member page shows folder names with Decode (these were its own
// decoder's cases).
func TestDecodeForDisplay(t *testing.T) {
	for in, want := range map[string]string{
		"INBOX":                   "INBOX",
		"Archivio/&AMg- 2024":     "Archivio/È 2024",
		"&ZeVnLIqe-":              "日本語",
		"Tom &- Jerry":            "Tom & Jerry",
		"broken &AMg":             "broken &AMg",
		"&U,BTFw-":                "台北",
		"Posta &AOg- arrivata &-": "Posta è arrivata &",
	} {
		if got := Decode(in); got != want {
			t.Errorf("Decode(%q) = %q, want %q", in, got, want)
		}
	}
}
