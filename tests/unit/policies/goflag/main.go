// Command goflag parses command lines with Go's flag package, for tests/unit/policies/test_flags.py
// to compare policies/flags.py with: one JSON case per input line ({"args", "booleans",
// "strings"}), one JSON result per output line ({"error", "values", "positional"}).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"io"
	"os"
)

type input struct {
	Args     []string `json:"args"`
	Booleans []string `json:"booleans"`
	Strings  []string `json:"strings"`
}

type output struct {
	Error      bool              `json:"error"`
	Values     map[string]string `json:"values"`
	Positional []string          `json:"positional"`
}

func main() {
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	encoder := json.NewEncoder(os.Stdout)
	for scanner.Scan() {
		var in input
		if err := json.Unmarshal(scanner.Bytes(), &in); err != nil {
			panic(err)
		}
		set := flag.NewFlagSet("case", flag.ContinueOnError)
		set.SetOutput(io.Discard)
		for _, name := range in.Booleans {
			set.Bool(name, false, "")
		}
		for _, name := range in.Strings {
			set.String(name, "", "")
		}
		out := output{Values: map[string]string{}, Positional: []string{}}
		if err := set.Parse(in.Args); err != nil {
			out.Error = true
		} else {
			set.Visit(func(f *flag.Flag) { out.Values[f.Name] = f.Value.String() })
			out.Positional = append(out.Positional, set.Args()...)
		}
		if err := encoder.Encode(out); err != nil {
			panic(err)
		}
	}
}
