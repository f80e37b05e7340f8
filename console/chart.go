package console

import (
	"fmt"
	"html/template"
	"sort"
	"strings"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

// The fleet chart: one bar per hour over the last 24 hours, accepted
// enrollments stacked under refusals broken down by code, drawn from the
// hourly counts of GET /admin/v1/fleet. It is an
// inline SVG rendered here, so the page needs no JavaScript.

var palette = []string{"#c0392b", "#e67e22", "#8e44ad", "#d35400", "#7f8c8d", "#b03a2e", "#af601a", "#6c3483"}

const acceptedColor = "#27ae60"

type legend struct {
	Name, Color string
	N           int
}

// refusalCodes are the refusal codes of hours, most frequent first.
func refusalCodes(hours []cluster.FleetHour) []legend {
	n := map[string]int{}
	for _, h := range hours {
		for c, k := range h.Refusals {
			n[orDefault(c, "unknown")] += k
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

func legendOf(hours []cluster.FleetHour) []legend {
	acc, _ := totals(hours)
	return append([]legend{{Name: "accepted", Color: acceptedColor, N: acc}}, refusalCodes(hours)...)
}

// totals are the accepted and the refused records of hours.
func totals(hours []cluster.FleetHour) (accepted, rejected int) {
	for _, h := range hours {
		accepted += h.Accepted
		rejected += h.Rejected
	}
	return accepted, rejected
}

func chart(hours []cluster.FleetHour) template.HTML {
	const barW, gap, height, top, bottom, left = 24, 6, 160, 10, 30, 36
	colors := map[string]string{}
	for _, l := range refusalCodes(hours) {
		colors[l.Name] = l.Color
	}
	type stack map[string]int // "accepted" or a code → count
	bars := make([]stack, len(hours))
	peak := 1
	for i, h := range hours {
		bars[i] = stack{"accepted": h.Accepted}
		t := h.Accepted
		for c, n := range h.Refusals {
			bars[i][orDefault(c, "unknown")] += n
			t += n
		}
		peak = max(peak, t)
	}
	width := left + len(hours)*(barW+gap)
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
				x, y, barW, hgt, c, hours[i].Start.Format("15:04"), n, template.HTMLEscapeString(k))
		}
		if i%3 == 0 {
			fmt.Fprintf(&sb, `<text x="%d" y="%d" class="axis">%s</text>`, x, top+height+18, hours[i].Start.Format("15h"))
		}
	}
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String()) // built from numbers, times and escaped codes only
}
