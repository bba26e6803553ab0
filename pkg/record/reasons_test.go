package record

import (
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestReasonsHoldsEveryReason reads the package's source for every
// constant of type Reason and checks that Reasons lists each one once, so
// that a new reason cannot miss the list the APIs' tables are checked
// against.
func TestReasonsHoldsEveryReason(t *testing.T) {
	declared := reasonConstants(t)
	if len(declared) == 0 {
		t.Fatal("found no constant of type Reason in the package's source")
	}
	listed := map[Reason]int{}
	for _, r := range Reasons() {
		listed[r]++
	}
	for name, r := range declared {
		if listed[r] == 0 {
			t.Errorf("%s (%q) is not in Reasons(): add it there, and a row for it to every API's table", name, r)
		}
	}
	for r, n := range listed {
		if n > 1 {
			t.Errorf("Reasons() lists %q %d times", r, n)
		}
		if !slices.Contains(slices.Collect(maps.Values(declared)), r) {
			t.Errorf("Reasons() lists %q, which is no constant of type Reason", r)
		}
	}
}

// reasonConstants parses the package's non-test files and returns each
// constant declared with type Reason, by name, with its value.
func reasonConstants(t testing.TB) map[string]Reason {
	t.Helper()
	fset := token.NewFileSet()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]Reason{}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			var typ ast.Expr // a spec without type or values repeats the one before
			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				if vs.Type != nil || len(vs.Values) > 0 {
					typ = vs.Type
				}
				for i, id := range vs.Names {
					var val ast.Expr
					if i < len(vs.Values) {
						val = vs.Values[i]
					}
					if !isReason(typ) {
						// Reason("x") without a declared type.
						call, ok := val.(*ast.CallExpr)
						if !ok || !isReason(call.Fun) || len(call.Args) != 1 {
							continue
						}
						val = call.Args[0]
					}
					lit, ok := val.(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Fatalf("%s: constant %s of type Reason: want a string literal as its value", fset.Position(id.Pos()), id.Name)
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					consts[id.Name] = Reason(v)
				}
			}
		}
	}
	return consts
}

func isReason(e ast.Expr) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == "Reason"
}
