package loadgen

import "testing"

func TestParseLoad(t *testing.T) {
	for _, l := range []Load{{Rate: 15000, Per: 10}, {Senders: 8, Per: 1}} {
		got, err := ParseLoad(l.String())
		if err != nil || got != l {
			t.Errorf("ParseLoad(%q) = %+v, %v; want %+v", l, got, err, l)
		}
	}
	for _, s := range []string{"", "rate=x/events-per-post=1", "senders=8", "senders=0/events-per-post=1", "rate=100/events-per-post=0", "rate=100/events-per-post=1junk"} {
		if _, err := ParseLoad(s); err == nil {
			t.Errorf("ParseLoad(%q): no error", s)
		}
	}
}
