// Package docblocks reads the fenced blocks of the documentation's pages
// and the check each names (a `<!-- docs-test: NAME -->` line just before
// it): the docs test checks them against the code, the Debian package
// ships some of them as examples. It only reads; it never judges a block.
package docblocks

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Block is one fenced block of a page.
type Block struct {
	Page  string // as given to Read
	Line  int    // of the opening fence
	Check string // the check named before it; "" if none
	Lang  string // after the opening fence
	Text  string // every line, each ending in a newline
}

var marker = regexp.MustCompile(`^<!-- docs-test: ([a-z0-9-]+) -->$`)

// Read returns the fenced blocks of the page at path, named page.
func Read(path, page string) ([]Block, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var blocks []Block
	var cur *Block
	check := ""
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil && line == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.Text += line + "\n"
		case strings.HasPrefix(line, "```"):
			cur = &Block{Page: page, Check: check, Lang: strings.TrimPrefix(line, "```"), Line: n}
		case marker.MatchString(line):
			check = marker.FindStringSubmatch(line)[1]
			continue
		}
		if strings.TrimSpace(line) != "" {
			check = ""
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: unterminated block", page, cur.Line)
	}
	return blocks, nil
}
