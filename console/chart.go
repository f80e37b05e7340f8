package console

import (
	"fmt"
	"html/template"
	"sort"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

// The fleet chart: one bar per hour over the last 24 hours, accepted
// enrollments stacked under refusals broken down by code. It is an
// inline SVG rendered here, so the page needs no JavaScript.

var palette = []string{"#c0392b", "#e67e22", "#8e44ad", "#d35400", "#7f8c8d", "#b03a2e", "#af601a", "#6c3483"}

const acceptedColor = "#27ae60"

type legend struct {
	Name, Color string
	N           int
}

func hourOf(rec cluster.AttestationRecord, since time.Time) int {
	return int(rec.Time.Sub(since) / time.Hour)
}

// refusalCodes are the refusal codes in recs since since, most frequent first.
func refusalCodes(recs []cluster.AttestationRecord, since time.Time) []legend {
	n := map[string]int{}
	for _, r := range recs {
		if r.Outcome == cluster.OutcomeRejected && !r.Time.Before(since) {
			n[orDefault(r.Code, "unknown")]++
		}
	}
	var out []legend
	for c, k := range n {
		out = append(out, legend{Name: c, N: k})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N > out[j].N || out[i].N == out[j].N && out[i].Name < out[j].Name })
	for i := range out {
		out[i].Color = palette[i%len(palette)]
	}
	return out
}

func legendOf(recs []cluster.AttestationRecord, since time.Time) []legend {
	return append([]legend{{Name: "accepted", Color: acceptedColor, N: countOutcome(recs, since, cluster.OutcomeAccepted)}}, refusalCodes(recs, since)...)
}

func countOutcome(recs []cluster.AttestationRecord, since time.Time, outcome string) int {
	n := 0
	for _, r := range recs {
		if r.Outcome == outcome && !r.Time.Before(since) {
			n++
		}
	}
	return n
}

func chart(recs []cluster.AttestationRecord, since, now time.Time) template.HTML {
	const hours, barW, gap, height, top, bottom, left = 24, 24, 6, 160, 10, 30, 36
	colors := map[string]string{}
	for _, l := range refusalCodes(recs, since) {
		colors[l.Name] = l.Color
	}
	type stack map[string]int // "accepted" or a code → count
	bars := make([]stack, hours)
	for i := range bars {
		bars[i] = stack{}
	}
	peak := 1
	for _, r := range recs {
		h := hourOf(r, since)
		if h < 0 || h >= hours || r.Time.After(now) {
			continue
		}
		switch r.Outcome {
		case cluster.OutcomeAccepted:
			bars[h]["accepted"]++
		case cluster.OutcomeRejected:
			bars[h][orDefault(r.Code, "unknown")]++
		}
	}
	for _, b := range bars {
		t := 0
		for _, n := range b {
			t += n
		}
		peak = max(peak, t)
	}
	width := left + hours*(barW+gap)
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart" role="img" aria-label="enrollments and refusals per hour" viewBox="0 0 %d %d" width="%d" height="%d">`, width, height+top+bottom, width, height+top+bottom)
	fmt.Fprintf(&sb, `<text x="0" y="%d" class="axis">%d</text><text x="0" y="%d" class="axis">0</text>`, top+10, peak, top+height)
	for i, b := range bars {
		x := left + i*(barW+gap)
		y := top + height
		keys := []string{"accepted"}
		var codes []string
		for k := range b {
			if k != "accepted" {
				codes = append(codes, k)
			}
		}
		sort.Strings(codes)
		keys = append(keys, codes...)
		for _, k := range keys {
			n := b[k]
			if n == 0 {
				continue
			}
			hgt := n * height / peak
			if hgt == 0 {
				hgt = 1
			}
			y -= hgt
			c := acceptedColor
			if k != "accepted" {
				c = colors[k]
			}
			fmt.Fprintf(&sb, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"><title>%s: %d %s</title></rect>`,
				x, y, barW, hgt, c, since.Add(time.Duration(i)*time.Hour).Format("15:04"), n, template.HTMLEscapeString(k))
		}
		if i%3 == 0 {
			fmt.Fprintf(&sb, `<text x="%d" y="%d" class="axis">%s</text>`, x, top+height+18, since.Add(time.Duration(i)*time.Hour).Format("15h"))
		}
	}
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String()) // built from numbers, times and escaped codes only
}
