// The reference for tests/unit/policies/test_durations.py: Go's own time.ParseDuration.
//
// Each input line is the hex of a string's bytes (any bytes, so invalid UTF-8 travels too);
// each output line is "ok <nanoseconds>" or "err".
package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"time"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		raw, err := hex.DecodeString(in.Text())
		if err != nil {
			fmt.Fprintln(out, "bad input")
		} else if d, err := time.ParseDuration(string(raw)); err != nil {
			fmt.Fprintln(out, "err")
		} else {
			fmt.Fprintf(out, "ok %d\n", int64(d))
		}
		out.Flush()
	}
}
