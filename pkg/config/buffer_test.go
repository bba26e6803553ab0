package config

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestWhatTheBufferIsFor(t *testing.T) {
	for _, tc := range []struct {
		name                string
		wal                 WAL
		mirrors             []Mirror
		needs               bool
		aheadT, spillsT     bool // topic "t"
		aheadOff, spillsOff bool // topic "off", in disable_topics
	}{
		{name: "fallback", wal: WAL{Mode: ModeFallback}, needs: true, spillsT: true},
		{name: "always", wal: WAL{Mode: ModeAlways}, needs: true, aheadT: true, spillsT: true},
		{name: "disable", wal: WAL{Mode: ModeDisable}},
		{name: "disable with an always topic", wal: WAL{Mode: ModeDisable, AlwaysTopics: []string{"t"}}, needs: true, aheadT: true},
		{name: "disable with a mirror", wal: WAL{Mode: ModeDisable}, mirrors: []Mirror{{Name: "m"}}, needs: true},
		{name: "always but a topic disabled", wal: WAL{Mode: ModeAlways, DisableTopics: []string{"off"}}, needs: true, aheadT: true, spillsT: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.wal.DisableTopics = append(tc.wal.DisableTopics, "off")
			c := &Config{Producer: Producer{WAL: tc.wal}, Mirrors: tc.mirrors}
			assert.Equal(t, tc.needs, c.NeedsBuffer(), "NeedsBuffer")
			assert.Equal(t, tc.aheadT, c.Producer.WAL.WritesAhead("t"), "WritesAhead(t)")
			assert.Equal(t, tc.spillsT, c.Producer.WAL.Spills("t"), "Spills(t)")
			assert.Equal(t, tc.aheadOff, c.Producer.WAL.WritesAhead("off"), "WritesAhead(off)")
			assert.Equal(t, tc.spillsOff, c.Producer.WAL.Spills("off"), "Spills(off)")
		})
	}
}
