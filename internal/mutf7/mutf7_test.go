package mutf7

import "testing"

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
	f.Fuzz(func(t *testing.T, s string) {
		d := Decode(s)
		if Encode(d) == s && Decode(Encode(d)) != d {
			t.Errorf("round trip of %q broke", s)
		}
	})
}
