// Package mutf7 encodes IMAP mailbox names in modified UTF-7 (RFC 3501
// section 5.1.3), for tests and the demo that must name folders as they sit
// on disk or in URLs. go-imap has its own encoder, but internal to it.
package mutf7

import (
	"encoding/base64"
	"strings"
	"unicode/utf16"
)

// modBase64 is the modified base64 of RFC 3501 section 5.1.3: ',' for '/', no
// padding.
var modBase64 = base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").WithPadding(base64.NoPadding)

// Encode encodes a mailbox name in modified UTF-7 (RFC 3501 section
// 5.1.3): printable ASCII stands for itself except '&', written "&-"; runs
// of other characters are UTF-16BE in modified base64 between '&' and '-'.
func Encode(s string) string {
	var b strings.Builder
	var run []uint16
	flush := func() {
		if len(run) == 0 {
			return
		}
		buf := make([]byte, 0, 2*len(run))
		for _, u := range run {
			buf = append(buf, byte(u>>8), byte(u))
		}
		b.WriteByte('&')
		b.WriteString(modBase64.EncodeToString(buf))
		b.WriteByte('-')
		run = run[:0]
	}
	for _, r := range s {
		if r >= 0x20 && r <= 0x7e {
			flush()
			if r == '&' {
				b.WriteString("&-")
			} else {
				b.WriteRune(r)
			}
			continue
		}
		run = utf16.AppendRune(run, r)
	}
	flush()
	return b.String()
}

// Decode decodes a mailbox name in modified UTF-7 (RFC 3501 section
// 5.1.3) for display. A name that is not valid modified UTF-7 (a server
// that sends UTF-8, a broken shift) is returned as it is: a person reads
// it better than an error.
func Decode(s string) string {
	if !strings.Contains(s, "&") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '&' {
			b.WriteByte(s[i])
			continue
		}
		end := strings.IndexByte(s[i+1:], '-')
		if end < 0 {
			return s
		}
		chunk := s[i+1 : i+1+end]
		i += end + 1
		if chunk == "" {
			b.WriteByte('&')
			continue
		}
		raw, err := modBase64.DecodeString(chunk)
		if err != nil || len(raw)%2 != 0 {
			return s
		}
		units := make([]uint16, len(raw)/2)
		for j := range units {
			units[j] = uint16(raw[2*j])<<8 | uint16(raw[2*j+1])
		}
		b.WriteString(string(utf16.Decode(units)))
	}
	return b.String()
}
