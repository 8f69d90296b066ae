package admin

// The status page's chart: a domain's copy rate over the History window,
// drawn on the server as inline SVG, so that it reads without JavaScript.
// It holds numbers and times only (no names from the store), all written
// by this file: nothing in it needs escaping.

import (
	"fmt"
	"html/template"
	"math"
	"strings"
	"time"
)

// The chart's geometry, in SVG user units (the viewBox).
const (
	chartW, chartH              = 600, 170
	chartLeft, chartRight       = 46, 8
	chartTop, chartBottom       = 10, 24
	chartPlotW                  = chartW - chartLeft - chartRight
	chartPlotH                  = chartH - chartTop - chartBottom
	chartTicks                  = 4 // x labels: window/4 apart
	chartGap                    = 1.0
	chartMinBar                 = 1.5
	chartMinLive                = 4
	chartTimeFormat             = "15:04:05"
	chartEmptyNote              = "No sample yet: the chart fills in as the gateway samples the copy."
	chartFloorMessagesPerMinute = 10 // the y scale's least maximum
)

// renderChart draws points (oldest first; the last may be Live) as bars of
// messages per minute over the window ending at now, and returns the SVG
// and a one-line summary.
func renderChart(points []HistoryPoint, now time.Time, window, every time.Duration) (template.HTML, string) {
	start := now.Add(-window)
	var peak float64
	var msgs, byts int64
	var inWindow []HistoryPoint
	for _, p := range points {
		if p.To.After(start) {
			inWindow = append(inWindow, p)
		}
	}
	points = inWindow
	for _, p := range points {
		peak = math.Max(peak, p.MessagesPerMinute())
		msgs += p.Messages
		byts += p.Bytes
	}
	top := chartNiceCeil(math.Max(peak, chartFloorMessagesPerMinute))
	xOf := func(t time.Time) float64 {
		f := float64(t.Sub(start)) / float64(window)
		return chartLeft + math.Max(0, math.Min(1, f))*chartPlotW
	}
	yOf := func(v float64) float64 { return chartTop + chartPlotH - v/top*chartPlotH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="Messages copied per minute over the last %s">`, chartW, chartH, pageDur(window))
	// Grid and y labels: 0, half, top.
	for _, v := range []float64{0, top / 2, top} {
		y := yOf(v)
		fmt.Fprintf(&b, `<line class="grid" x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`, chartLeft, y, chartW-chartRight, y)
		fmt.Fprintf(&b, `<text class="axis" x="%d" y="%.1f" text-anchor="end">%s</text>`, chartLeft-6, y+3.5, chartCompact(v))
	}
	fmt.Fprintf(&b, `<text class="axis unit" x="%d" y="%d">msg/min</text>`, chartLeft+4, chartTop+10)
	// x labels: minutes ago.
	for i := 0; i <= chartTicks; i++ {
		t := start.Add(time.Duration(i) * window / chartTicks)
		label := "now"
		if i < chartTicks {
			label = "−" + chartAgo(now.Sub(t))
		}
		anchor := "middle"
		switch i {
		case 0:
			anchor = "start"
		case chartTicks:
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text class="axis" x="%.1f" y="%d" text-anchor="%s">%s</text>`, xOf(t), chartH-6, anchor, label)
	}
	for _, p := range points {
		x0, x1 := xOf(p.From), xOf(p.To)
		if x1 <= chartLeft {
			continue
		}
		w := math.Max(x1-x0-chartGap, chartMinBar)
		if p.Live {
			w = math.Max(w, chartMinLive) // the open interval is often seconds wide
			x0 = math.Min(x0, chartW-chartRight-w)
		}
		v := p.MessagesPerMinute()
		y := yOf(v)
		h := chartTop + chartPlotH - y
		if p.Messages > 0 {
			h = math.Max(h, chartMinBar) // a trickle stays visible
		}
		class := "bar"
		if p.Live {
			class = "bar live"
		}
		title := fmt.Sprintf("%s–%s: %s messages, %s (%s msg/min)%s",
			p.From.Local().Format(chartTimeFormat), p.To.Local().Format(chartTimeFormat),
			pageNum(p.Messages), pageSize(p.Bytes), chartCompact(v), map[bool]string{true: ", still counting"}[p.Live])
		fmt.Fprintf(&b, `<rect class="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s</title></rect>`,
			class, x0, chartTop+chartPlotH-h, w, h, template.HTMLEscapeString(title))
	}
	fmt.Fprintf(&b, `<line class="baseline" x1="%d" y1="%d" x2="%d" y2="%d"/>`, chartLeft, chartTop+chartPlotH, chartW-chartRight, chartTop+chartPlotH)
	if len(points) == 0 {
		fmt.Fprintf(&b, `<text class="empty" x="%d" y="%d" text-anchor="middle">%s</text>`, chartLeft+chartPlotW/2, chartTop+chartPlotH/2, "no sample yet")
	}
	b.WriteString(`</svg>`)

	note := chartEmptyNote
	if len(points) > 0 {
		span := now.Sub(points[0].From).Round(time.Minute)
		if span > window {
			span = window
		}
		note = fmt.Sprintf("%s messages (%s) copied in the last %s; peak %s msg/min. Sampled every %s.",
			pageNum(msgs), pageSize(byts), pageDur(max(span, time.Minute)), chartCompact(peak), pageDur(every))
	}
	return template.HTML(b.String()), note
}

// chartAgo writes a tick's distance from now: "45 min", "30 s".
func chartAgo(d time.Duration) string {
	if d >= time.Minute {
		return fmt.Sprintf("%d min", int(d.Round(time.Minute)/time.Minute))
	}
	return fmt.Sprintf("%d s", int(d.Round(time.Second)/time.Second))
}

// chartNiceCeil rounds v up to 1, 2 or 5 times a power of ten.
func chartNiceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// chartCompact writes a rate with at most three significant digits: 0, 0.5, 12,
// 340, 1.2k.
func chartCompact(v float64) string {
	switch {
	case v >= 1e6:
		return chartTrimZero(fmt.Sprintf("%.1f", v/1e6)) + "M"
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 1e3:
		return chartTrimZero(fmt.Sprintf("%.1f", v/1e3)) + "k"
	case v >= 10 || v == 0:
		return fmt.Sprintf("%.0f", v)
	}
	return chartTrimZero(fmt.Sprintf("%.1f", v))
}

func chartTrimZero(s string) string { return strings.TrimSuffix(s, ".0") }
