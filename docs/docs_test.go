// Package docs holds the operator's documentation; this test keeps it
// true to the code.
package docs

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/podkey/podkey/internal/cmd/csicmd"
	"github.com/podkey/podkey/internal/cmd/keydcmd"
	"github.com/podkey/podkey/internal/cmd/podkeycmd"
	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/policy"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/testenv/metricstest"
)

type block struct {
	file, lang, text string
}

var fenceRE = regexp.MustCompile("(?s)```([a-z]*)\n(.*?)```")

func blocks(t *testing.T) ([]block, map[string]string) {
	files, err := filepath.Glob("*.md")
	if err != nil || len(files) < 3 {
		t.Fatalf("docs: %v %v", files, err)
	}
	files = append(files, "../README.md")
	var out []block
	texts := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		texts[f] = string(b)
		for _, m := range fenceRE.FindAllStringSubmatch(string(b), -1) {
			out = append(out, block{f, m[1], m[2]})
		}
	}
	return out, texts
}

// Every YAML example parses with the parser podkey uses for it.
func TestYAMLExamples(t *testing.T) {
	all, _ := blocks(t)
	n := 0
	for _, b := range all {
		if b.lang != "yaml" {
			continue
		}
		n++
		switch {
		case strings.HasPrefix(b.text, "# values.yaml"):
			// Chart values: rendered by the chart, against its schema.
			cmd := exec.Command("go", "tool", "helm", "template", "podkey", "charts/podkey", "-f", "-")
			cmd.Dir, cmd.Stdin = "..", strings.NewReader(b.text)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s: the chart refuses the values: %v\n%s", b.file, err, out)
			}
		case strings.Contains(b.text, "kind: SecretProviderClass"):
			var c sscsi.SecretProviderClass
			if err := yaml.UnmarshalStrict([]byte(b.text), &c); err != nil {
				t.Errorf("%s: %v", b.file, err)
				continue
			}
			if _, err := spc.Objects(&c); err != nil {
				t.Errorf("%s: podkey refuses the class: %v", b.file, err)
			}
		case strings.Contains(b.text, "people:"):
			if _, err := approval.ParseRoster([]byte(b.text)); err != nil {
				t.Errorf("%s: roster example: %v", b.file, err)
			}
		case strings.Contains(b.text, "rules:") || strings.Contains(b.text, "imageRules:"):
			doc := b.text
			if !strings.Contains(doc, "version:") {
				doc = "version: v1\n" + doc
			}
			if _, err := policy.Parse([]byte(doc)); err != nil {
				t.Errorf("%s: policy example: %v", b.file, err)
			}
		default:
			var v any
			if err := yaml.Unmarshal([]byte(b.text), &v); err != nil {
				t.Errorf("%s: %v", b.file, err)
			}
		}
	}
	if n == 0 {
		t.Fatal("no YAML example found")
	}
}

// Every command example names a real command and flags it takes.
func TestCommandExamples(t *testing.T) {
	roots := map[string]func() *cobra.Command{"podkey": podkeycmd.NewCommand, "podkey-keyd": keydcmd.NewCommand, "podkey-csi": csicmd.NewCommand}
	all, _ := blocks(t)
	n := 0
	for _, b := range all {
		if b.lang != "sh" {
			continue
		}
		// A command may go on over lines ending in a backslash.
		for _, line := range strings.Split(strings.ReplaceAll(b.text, "\\\n", " "), "\n") {
			fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "$ "))
			if len(fields) == 0 || roots[fields[0]] == nil {
				continue
			}
			n++
			root := roots[fields[0]]()
			cmd, rest, err := root.Find(fields[1:])
			if err != nil || cmd == root && root.HasSubCommands() && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
				t.Errorf("%s: %q names no command: %v", b.file, line, err)
				continue
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Errorf("%s: %q: %v", b.file, line, err)
			}
		}
	}
	if n == 0 {
		t.Fatal("no command example found")
	}
}

var (
	metricNameRE = regexp.MustCompile("`(podkey_[a-z0-9_]+)")
	messageRE    = regexp.MustCompile("^\\| `([^`]+)` \\| ([^|]+)\\|")
)

// Every metric the docs name exists, and every message in the
// troubleshooting table is one podkey writes (those marked as another
// program's aside).
func TestMetricsAndMessagesExist(t *testing.T) {
	_, texts := blocks(t)
	have := metricstest.Exported(t)
	for f, text := range texts {
		for _, m := range metricNameRE.FindAllStringSubmatch(text, -1) {
			if _, ok := metricstest.Lookup(have, m[1]); !ok {
				t.Errorf("%s names %s, which podkey does not export", f, m[1])
			}
		}
	}
	var src strings.Builder
	for _, dir := range []string{"../internal", "../pkg"} {
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
				b, _ := os.ReadFile(path)
				src.Write(b)
			}
			return nil
		})
	}
	messages := 0
	_, trouble, _ := strings.Cut(texts["operations.md"], "## Troubleshooting")
	trouble, _, _ = strings.Cut(trouble, "\n## ")
	for _, line := range strings.Split(trouble, "\n") {
		m := messageRE.FindStringSubmatch(line)
		if m == nil || m[1] == "message (part)" || strings.Contains(m[2], "(containerd)") {
			continue
		}
		messages++
		if !strings.Contains(src.String(), m[1]) {
			t.Errorf("operations.md: podkey never writes %q", m[1])
		}
	}
	if messages < 10 {
		t.Fatalf("%d troubleshooting messages checked", messages)
	}
}

// dirRE matches a directory named in a table of architecture.md.
var dirRE = regexp.MustCompile("^\\| `([a-z0-9][a-z0-9/._-]*)` \\|")

// Every directory of this module that holds Go code is named in
// architecture.md, and every directory named there exists.
func TestArchitectureNamesEveryDirectory(t *testing.T) {
	page, err := os.ReadFile("architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, line := range strings.Split(string(page), "\n") {
		if m := dirRE.FindStringSubmatch(line); m != nil {
			named[m[1]] = true
		}
	}
	for d := range named {
		if fi, err := os.Stat(filepath.Join("..", d)); err != nil || !fi.IsDir() {
			t.Errorf("architecture.md names %s, which is not a directory", d)
		}
	}
	have := 0
	err = filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel("..", path)
		if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || rel == "bin") {
			return filepath.SkipDir
		}
		if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil && rel != "." {
			return filepath.SkipDir // another module (hack's pinned tools)
		}
		if gofiles, _ := filepath.Glob(filepath.Join(path, "*.go")); len(gofiles) == 0 || rel == "." {
			return nil
		}
		have++
		if !named[filepath.ToSlash(rel)] {
			t.Errorf("architecture.md does not name %s", rel)
		}
		return nil
	})
	if err != nil || have < 60 {
		t.Fatalf("walked %d directories with Go code: %v", have, err)
	}
}

// linksRE is a row of the README's table of what each binary links.
var linksRE = regexp.MustCompile("^\\| `([a-z-]+)`[^|]* \\| `([a-z/]+)`[^|]* \\| ([^|]+) \\|$")

// The README's table of what each binary links is what go list -deps
// says: each is built on its side and links no code of the sides named
// against it; the CLI links the key service only through podkey bench.
func TestBinariesLinkWhatTheREADMESays(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const mod = "github.com/podkey/podkey/"
	rows := 0
	for _, line := range strings.Split(string(readme), "\n") {
		m := linksRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		rows++
		bin, on := m[1], mod+m[2]
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}: {{join .Imports \" \"}}", "../cmd/"+bin).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", bin, err, out)
		}
		deps := map[string][]string{}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			pkg, imports, _ := strings.Cut(l, ": ")
			deps[pkg] = strings.Fields(imports)
		}
		built := false
		for pkg := range deps {
			built = built || pkg == on || strings.HasPrefix(pkg, on+"/")
		}
		if !built {
			t.Errorf("%s links nothing of %s", bin, m[2])
		}
		for _, never := range regexp.MustCompile("`([a-z/]+)`").FindAllStringSubmatch(m[3], -1) {
			for pkg := range deps {
				if pkg == mod+never[1] || strings.HasPrefix(pkg, mod+never[1]+"/") {
					t.Errorf("%s links %s, against the README", bin, strings.TrimPrefix(pkg, mod))
				}
			}
		}
		if bin == "podkey" {
			for pkg, imports := range deps {
				for _, imp := range imports {
					if imp == mod+"internal/keyd/service" && pkg != mod+"internal/keyd/bench" {
						t.Errorf("podkey links the key service through %s, not only podkey bench", strings.TrimPrefix(pkg, mod))
					}
				}
			}
		}
	}
	if rows < 6 {
		t.Fatalf("%d rows of the binaries table found in the README", rows)
	}
}
