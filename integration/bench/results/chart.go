package results

import (
	"fmt"
	"strings"

	"github.com/tether-shim/tether/integration/bench/procmem"
)

// Charts are the density charts by file name: total memory of the runtime
// processes against the number of idle containers (memory.svg) and of idle
// pods (pods.svg), when measured.
func Charts(s *Samples) map[string]string {
	charts := map[string]string{}
	if len(s.Containers) > 0 {
		charts["memory.svg"] = chart(fmt.Sprintf("Total shim memory vs idle containers (%s)", s.Date), "containers (one shim each)", s.Containers)
	}
	if t, r := s.Pods[Tether], s.Pods[Runc]; t != nil && r != nil && len(t.Scale) > 0 {
		charts["pods.svg"] = chart(fmt.Sprintf("Total memory of idle pods: shim + pause or holder (%s)", s.Date), "pods (one container each)",
			map[string][]ScalePoint{Tether: t.Scale, Runc: r.Scale})
	}
	return charts
}

// chart draws each runtime's total RSS (solid), PSS (dashed) and anonymous
// memory (dotted) against n, as SVG.
func chart(title, xLabel string, series map[string][]ScalePoint) string {
	const w, h, left, bottom, top, right = 720, 420, 80, 50, 40, 160
	maxN, maxKiB := 1, 1
	for _, pts := range series {
		for _, p := range pts {
			maxN = max(maxN, p.N)
			maxKiB = max(maxKiB, p.Total.RSSKiB)
		}
	}
	x := func(n int) float64 { return left + float64(n)/float64(maxN)*float64(w-left-right) }
	y := func(kib int) float64 { return float64(h-bottom) - float64(kib)/float64(maxKiB)*float64(h-bottom-top) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">%s</text>`+"\n", left, title)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, h-bottom, w-right, h-bottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, h-bottom)
	for i := 0; i <= 4; i++ {
		kib := maxKiB * i / 4
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end">%d MiB</text>`+"\n", left-6, y(kib)+4, kib/1024)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.0f" x2="%d" y2="%.0f" stroke="#ddd"/>`+"\n", left, y(kib), w-right, y(kib))
	}
	for _, p := range series[Tether] {
		fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">%d</text>`+"\n", x(p.N), h-bottom+16, p.N)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", (left+w-right)/2, h-12, xLabel)
	colors := map[string]string{Tether: "#1f77b4", Runc: "#d62728"}
	dashes := map[procmem.Field]string{procmem.RSS: "", procmem.PSS: ` stroke-dasharray="6,4"`, procmem.Anon: ` stroke-dasharray="2,3"`}
	legend := top
	for _, name := range []string{Tether, Runc} {
		for _, f := range []procmem.Field{procmem.RSS, procmem.PSS, procmem.Anon} {
			var pts []string
			for _, p := range series[name] {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.N), y(f.Of(p.Total))))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", colors[name], dashes[f], strings.Join(pts, " "))
			fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", w-right+10, legend, w-right+40, legend, colors[name], dashes[f])
			fmt.Fprintf(&b, `<text x="%d" y="%d">%s %s</text>`+"\n", w-right+46, legend+4, name, f)
			legend += 20
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}
