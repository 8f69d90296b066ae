package preflight

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pecgate/pecgate/backend"
)

func sampleReport() *Report {
	return &Report{
		Domain: "pec.ordine.example", State: "old", Old: "aruba", New: "infocert",
		Started: time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC), Finished: time.Date(2026, 11, 23, 18, 1, 0, 0, time.UTC),
		Concurrency: map[string]int{"aruba": 2, "infocert": 2},
		Members: []*Member{
			{User: "a@pec.ordine.example", State: "old", OldLogin: LoginOK, NewLogin: LoginOK, Folders: 3, Messages: 10, Bytes: 1000,
				QuotaLimit: 2048, QuotaUsed: 0, QuotaSource: "GETQUOTAROOT", SizeLimit: 500, FoldersChecked: true,
				Oversize:       []Oversize{{Folder: "INBOX", UID: 7, Size: 600, Date: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Subject: "=HYPERLINK(\"x\")"}},
				FolderRefusals: []FolderRefusal{{Folder: "@Fatture 2023.01", NewFolder: "@Fatture 2023.01", Messages: 2, Reason: "[CANNOT] Character not allowed"}},
				Problems: []Problem{
					{Side: SideNew, Provider: "infocert", Kind: KindOversize, Blocks: true, Message: "1 message too big", Advice: "ask"},
					{Side: SideNew, Provider: "infocert", Kind: KindFolder, Blocks: true, Message: "folder refused", Advice: "rename"},
				}},
			{User: "b@pec.ordine.example", State: "old", OldLogin: LoginRefused, NewLogin: LoginNotChecked,
				Problems: []Problem{{Side: SideOld, Provider: "aruba", Kind: KindLogin, Refusal: backend.RefusalSecondFactor, Blocks: true, Message: "m", Advice: "a"}}},
			{User: "c@pec.ordine.example", State: "old", OldLogin: LoginNotChecked, NewLogin: LoginOK,
				Problems: []Problem{{Side: SideOld, Provider: "aruba", Kind: KindNoPassword, Message: "m", Advice: "a"}}},
		},
	}
}

// TestReportJSON: the JSON document carries the computed verdicts and
// decodes back into the same report (the CLI prints what the gateway ran).
func TestReportJSON(t *testing.T) {
	r := sampleReport()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"ok":false`, `"verdict":"blocked"`, `"verdict":"warning"`, `"blocks":true`, `"refusal":"two-factor"`, `"folders_refused":[{"folder":"@Fatture 2023.01"`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, r) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, *r)
	}
}

// TestReportCSV: one row per member; cells a spreadsheet would run as
// formulas are defused.
func TestReportCSV(t *testing.T) {
	var out bytes.Buffer
	if err := sampleReport().WriteCSV(&out); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&out).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 4 {
		t.Fatalf("%d lines", len(recs))
	}
	row := map[string]string{}
	for i, h := range CSVHeader {
		row[h] = recs[1][i]
	}
	want := map[string]string{"verdict": "blocked", "quota_limit": "2048", "quota_used": "0", "size_limit": "500",
		"oversize": "INBOX 7 600", "folders_refused": "'@Fatture 2023.01 -> @Fatture 2023.01: [CANNOT] Character not allowed",
		"problems": "1 message too big | folder refused", "advice": "ask | rename"}
	for k, v := range want {
		if row[k] != v {
			t.Errorf("%s = %q, want %q", k, row[k], v)
		}
	}
	if c := recs[2]; c[2] != "blocked" || c[8] != "" || c[10] != "" {
		t.Errorf("member without quota: %q", c)
	}
	if !strings.HasPrefix(recs[3][2], "warning") {
		t.Errorf("member with a warning: %q", recs[3])
	}
}
