package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/config"
)

// unitFile is a parsed systemd unit: section -> key -> values in order
// (a key may repeat, as SystemCallFilter= does).
type unitFile map[string]map[string][]string

// parseUnit reads a systemd unit file: [Section] headers, Key=Value lines,
// '#' and ';' comments, and backslash line continuations.
func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cont string
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line, cont = cont+" "+line, ""
		}
		if strings.HasSuffix(line, `\`) {
			cont = strings.TrimSuffix(line, `\`)
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: want Key=Value inside a [Section], got %q", path, n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// get returns the last value of key in section, as systemd applies it.
func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// TestSystemdUnit checks dist/pecgate.service: its command line is one
// pecgate accepts, its directories are the ones the configuration uses by
// default, and the hardening the README promises is there.
func TestSystemdUnit(t *testing.T) {
	const path = "../../dist/pecgate.service"
	u := parseUnit(t, path)

	argv := strings.Fields(u.get("Service", "ExecStart"))
	if len(argv) < 2 || filepath.Base(argv[0]) != "pecgate" || argv[1] != "serve" {
		t.Fatalf("ExecStart = %q, want pecgate serve ...", argv)
	}
	checkCommandLine(t, "ExecStart", argv[1:])
	if cfg := flagValue(argv, "-config"); cfg != defaultConfig {
		t.Errorf("ExecStart reads %q, want the default configuration %s", cfg, defaultConfig)
	}
	// StateDirectory=pecgate is /var/lib/pecgate, ConfigurationDirectory=pecgate
	// is /etc/pecgate: the places the config and the binary use by default.
	if got := "/var/lib/" + u.get("Service", "StateDirectory"); got != config.DefaultStorePath {
		t.Errorf("StateDirectory makes %s, but store.path defaults to %s", got, config.DefaultStorePath)
	}
	if got := "/etc/" + u.get("Service", "ConfigurationDirectory"); got != filepath.Dir(defaultConfig) {
		t.Errorf("ConfigurationDirectory makes %s, but the configuration is %s", got, defaultConfig)
	}
	if r := u.get("Service", "ExecReload"); !strings.Contains(r, "-HUP") || !strings.Contains(r, "$MAINPID") {
		t.Errorf("ExecReload = %q, want a SIGHUP to $MAINPID (it reloads the certificates)", r)
	}
	for key, want := range map[string]string{
		"Restart":                    "on-failure",
		"AmbientCapabilities":        "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet":      "CAP_NET_BIND_SERVICE",
		"NoNewPrivileges":            "yes",
		"ProtectSystem":              "strict",
		"ProtectHome":                "yes",
		"PrivateTmp":                 "yes",
		"PrivateDevices":             "yes",
		"ProtectKernelTunables":      "yes",
		"ProtectKernelModules":       "yes",
		"ProtectKernelLogs":          "yes",
		"ProtectControlGroups":       "yes",
		"RestrictAddressFamilies":    "AF_INET AF_INET6 AF_UNIX",
		"SystemCallFilter":           "@system-service",
		"SystemCallArchitectures":    "native",
		"MemoryDenyWriteExecute":     "yes",
		"LockPersonality":            "yes",
		"RestrictNamespaces":         "yes",
		"RestrictSUIDSGID":           "yes",
		"SystemCallErrorNumber":      "EPERM",
		"ConfigurationDirectory":     "pecgate",
		"StateDirectory":             "pecgate",
		"StateDirectoryMode":         "0700",
		"User":                       "pecgate",
		"Type":                       "exec",
		"ExecStart":                  "/usr/local/bin/pecgate serve -config /etc/pecgate/pecgate.toml",
		"LimitNOFILE":                "65536",
		"ConfigurationDirectoryMode": "0750",
	} {
		if got := u.get("Service", key); got != want {
			t.Errorf("[Service] %s = %q, want %q", key, got, want)
		}
	}
	if u.get("Install", "WantedBy") != "multi-user.target" {
		t.Errorf("[Install] WantedBy = %q, want multi-user.target", u.get("Install", "WantedBy"))
	}
	// The user the unit names is the one the sysusers file creates.
	sysusers, err := os.ReadFile("../../dist/pecgate.sysusers")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(strings.Split(string(sysusers), "\n"), func(l string) bool {
		f := strings.Fields(l)
		return len(f) >= 2 && f[0] == "u" && f[1] == u.get("Service", "User")
	}) {
		t.Errorf("dist/pecgate.sysusers does not create the user %s", u.get("Service", "User"))
	}
}

// TestSystemdUnitVerify runs systemd-analyze on dist/pecgate.service (with
// ExecStart pointing at an executable that exists here): verify must say
// nothing about it (an unknown or misspelt key is only a warning there, so
// any line naming the unit fails the test), and the offline security
// review must rate its exposure 2.5 or better.
func TestSystemdUnitVerify(t *testing.T) {
	bin, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not found; CI must have it: apt-get install systemd (make deps does)")
		}
		t.Skip("systemd-analyze not found; to check dist/pecgate.service install it: sudo apt-get install systemd")
	}
	data, err := os.ReadFile("../../dist/pecgate.service")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	unit := filepath.Join(dir, "pecgate.service")
	text := strings.Replace(string(data), "ExecStart=/usr/local/bin/pecgate ", "ExecStart="+self+" ", 1)
	if text == string(data) {
		t.Fatal("ExecStart does not run /usr/local/bin/pecgate")
	}
	if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "verify", "--man=no", unit).CombinedOutput()
	var mentions []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "pecgate.service") {
			mentions = append(mentions, l)
		}
	}
	if err != nil || len(mentions) > 0 {
		t.Errorf("systemd-analyze verify dist/pecgate.service: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "security", "--offline=yes", "--threshold=25", unit).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.5 (or the check failed): %v\n%s", err, out)
	}
}

// TestDockerfile checks the Dockerfile without a Docker engine: the image
// runs `pecgate serve` with a command line pecgate accepts, declares the
// configuration and the store's default directories as volumes, exposes
// the default listener ports and does not run as root.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Instructions of the last stage (the image), continuations joined.
	var final [][2]string
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		instr, args, _ := strings.Cut(line, " ")
		instr = strings.ToUpper(instr)
		if instr == "FROM" {
			final = nil
		}
		final = append(final, [2]string{instr, strings.TrimSpace(args)})
	}
	last := func(instr string) string {
		v := ""
		for _, in := range final {
			if in[0] == instr {
				v = in[1]
			}
		}
		return v
	}
	execForm := func(instr string) []string {
		var v []string
		if err := json.Unmarshal([]byte(last(instr)), &v); err != nil {
			t.Fatalf("%s %s: want the exec form, a JSON array: %v", instr, last(instr), err)
		}
		return v
	}
	argv := append(execForm("ENTRYPOINT"), execForm("CMD")...)
	if len(argv) < 2 || filepath.Base(argv[0]) != "pecgate" || argv[1] != "serve" {
		t.Fatalf("the image runs %q, want pecgate serve ...", argv)
	}
	checkCommandLine(t, "ENTRYPOINT+CMD", argv[1:])
	cfg := flagValue(argv, "-config")
	if cfg == "" {
		cfg = defaultConfig
	}
	volumes := execForm("VOLUME")
	for _, dir := range []string{filepath.Dir(cfg), config.DefaultStorePath} {
		if !slices.Contains(volumes, dir) {
			t.Errorf("VOLUME %q lacks %s (the configuration's directory and the default store.path)", volumes, dir)
		}
	}
	exposed := strings.Fields(last("EXPOSE"))
	for _, addr := range []string{config.DefaultIMAPS, config.DefaultIMAP, config.DefaultSMTPS, config.DefaultSubmission, config.DefaultAdmin} {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(exposed, port) && !slices.Contains(exposed, port+"/tcp") {
			t.Errorf("EXPOSE %q lacks %s (default listener %s)", exposed, port, addr)
		}
	}
	user, _, _ := strings.Cut(last("USER"), ":")
	if user == "" || user == "root" || user == "0" {
		t.Errorf("USER %q: the image must not run as root", last("USER"))
	}
}

// checkCommandLine proves that pecgate accepts args (a subcommand and its
// flags) by running them with -h appended: parsing stops at -h with exit 0,
// while an unknown flag exits 2 before it.
func checkCommandLine(t *testing.T, what string, args []string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(append(slices.Clone(args), "-h"), &stdout, &stderr); code != 0 {
		t.Errorf("%s runs pecgate %s, which pecgate refuses (exit %d):\n%s", what, strings.Join(args, " "), code, stderr.String())
	}
}

// flagValue returns the value given to flag in argv, or "".
func flagValue(argv []string, flag string) string {
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			return argv[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}
