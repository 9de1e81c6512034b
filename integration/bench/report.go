package main

import (
	"fmt"
	"sort"
	"strings"
)

// target is an issue's goal for a ratio tether/runc-v2.
type target struct {
	max bool    // the ratio must stay at or under limit (else at or over)
	lim float64 // the limit
}

func (t target) met(ratio float64) bool {
	if t.max {
		return ratio <= t.lim
	}
	return ratio >= t.lim
}

func (t target) String() string {
	if t.max {
		return fmt.Sprintf("≤ %.1f", t.lim)
	}
	return fmt.Sprintf("≥ %.1f", t.lim)
}

func median(xs []float64) float64 { return percentile(xs, 0.5) }

func memStat(shims []ShimMemory, pss bool) float64 {
	var xs []float64
	for _, m := range shims {
		if pss {
			xs = append(xs, float64(m.PSSKiB))
		} else {
			xs = append(xs, float64(m.RSSKiB))
		}
	}
	return median(xs)
}

// sandboxMemStat is the median memory of the pods' pause processes (or holders).
func sandboxMemStat(pods []PodMemory, pss bool) float64 {
	var m []ShimMemory
	for _, p := range pods {
		m = append(m, p.Sandbox)
	}
	return memStat(m, pss)
}

func scaleAt(points []ScalePoint, n int) (ScalePoint, bool) {
	for _, p := range points {
		if p.Containers == n {
			return p, true
		}
	}
	return ScalePoint{}, false
}

// markdown renders the comparison table.
func markdown(s *Samples) string {
	var b strings.Builder
	fmt.Fprintf(&b, "tether vs containerd-shim-runc-v2, %s, %s\n\n", s.Date, s.Machine)
	b.WriteString("| figure | tether | runc-v2 | tether/runc-v2 | target | met |\n|---|---:|---:|---:|---|---|\n")
	row := func(name, unit string, t, r float64, tgt *target) {
		ratio := 0.0
		if r != 0 {
			ratio = t / r
		}
		goal, met := "", ""
		if tgt != nil {
			goal = tgt.String()
			met = "no"
			if tgt.met(ratio) {
				met = "yes"
			}
		}
		fmt.Fprintf(&b, "| %s | %s %s | %s %s | %.2f | %s | %s |\n", name, num(t), unit, num(r), unit, ratio, goal, met)
	}
	row("idle RSS per shim (median)", "KiB", memStat(s.Idle["tether"], false), memStat(s.Idle["runc-v2"], false), &target{true, 0.3})
	row("idle PSS per shim (median)", "KiB", memStat(s.Idle["tether"], true), memStat(s.Idle["runc-v2"], true), &target{true, 0.3})
	if len(s.Steady["tether"]) > 0 {
		age := s.SteadyAge
		row("idle RSS per shim after "+age+" (median)", "KiB", memStat(s.Steady["tether"], false), memStat(s.Steady["runc-v2"], false), &target{true, 0.3})
		row("idle PSS per shim after "+age+" (median)", "KiB", memStat(s.Steady["tether"], true), memStat(s.Steady["runc-v2"], true), &target{true, 0.3})
	}
	var ns []int
	for _, p := range s.Scale["tether"] {
		ns = append(ns, p.Containers)
	}
	sort.Ints(ns)
	for _, n := range ns {
		if n != 1 && n != 50 && n != 200 {
			continue
		}
		t, _ := scaleAt(s.Scale["tether"], n)
		r, _ := scaleAt(s.Scale["runc-v2"], n)
		row(fmt.Sprintf("total shim RSS, %d containers", n), "KiB", float64(t.RSSKiB), float64(r.RSSKiB), nil)
		row(fmt.Sprintf("total shim PSS, %d containers", n), "KiB", float64(t.PSSKiB), float64(r.PSSKiB), nil)
	}
	row("lifecycle `ctr run --rm` p50", "ms", percentile(s.Lifecycle["tether"], 0.5), percentile(s.Lifecycle["runc-v2"], 0.5), &target{true, 0.9})
	row("lifecycle `ctr run --rm` p95", "ms", percentile(s.Lifecycle["tether"], 0.95), percentile(s.Lifecycle["runc-v2"], 0.95), nil)
	row("exec `ctr task exec` p50", "ms", percentile(s.Exec["tether"], 0.5), percentile(s.Exec["runc-v2"], 0.5), &target{true, 0.9})
	row("exec `ctr task exec` p95", "ms", percentile(s.Exec["tether"], 0.95), percentile(s.Exec["runc-v2"], 0.95), nil)
	row("stdout throughput", "MB/s", s.Stdout["tether"], s.Stdout["runc-v2"], &target{false, 1.0})
	row(fmt.Sprintf("shim CPU over %d lifecycles", len(s.Lifecycle["tether"])), "ms", s.CPU["tether"], s.CPU["runc-v2"], &target{true, 0.7})
	if t, r := s.Pods["tether"], s.Pods["runc-v2"]; t != nil && r != nil {
		row("pod: CRI RunPodSandbox p50", "ms", percentile(t.RunPodSandboxMs, 0.5), percentile(r.RunPodSandboxMs, 0.5), &target{true, 1.0})
		row("pod: CRI RunPodSandbox p95", "ms", percentile(t.RunPodSandboxMs, 0.95), percentile(r.RunPodSandboxMs, 0.95), nil)
		row("pod: start to first container running p50", "ms", percentile(t.FirstContainerMs, 0.5), percentile(r.FirstContainerMs, 0.5), &target{true, 1.0})
		row("pod: start to first container running p95", "ms", percentile(t.FirstContainerMs, 0.95), percentile(r.FirstContainerMs, 0.95), nil)
		row("pod: shim + pause (tether: + holder) RSS per idle pod (median)", "KiB", podMemStat(t.Memory, false), podMemStat(r.Memory, false), &target{true, 1.0})
		row("pod: shim + pause (tether: + holder) PSS per idle pod (median)", "KiB", podMemStat(t.Memory, true), podMemStat(r.Memory, true), &target{true, 1.0})
		row("pod: pause process (tether: holder) RSS (median)", "KiB", sandboxMemStat(t.Memory, false), sandboxMemStat(r.Memory, false), nil)
		row("pod: pause process (tether: holder) PSS (median)", "KiB", sandboxMemStat(t.Memory, true), sandboxMemStat(r.Memory, true), nil)
	}
	b.WriteString(upgradeMarkdown(s))
	b.WriteString("\n")
	var keys []string
	for k := range s.Versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "- %s: %s\n", k, s.Versions[k])
	}
	return b.String()
}

func num(x float64) string {
	if x >= 100 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

// chart draws total shim memory (RSS solid, PSS dashed) against the number
// of containers, for both runtimes, as SVG.
func chart(s *Samples) string {
	const w, h, left, bottom, top, right = 720, 420, 80, 50, 40, 160
	maxN, maxKiB := 1, 1
	for _, pts := range s.Scale {
		for _, p := range pts {
			maxN = max(maxN, p.Containers)
			maxKiB = max(maxKiB, p.RSSKiB)
		}
	}
	x := func(n int) float64 { return left + float64(n)/float64(maxN)*float64(w-left-right) }
	y := func(kib int) float64 { return float64(h-bottom) - float64(kib)/float64(maxKiB)*float64(h-bottom-top) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">Total shim memory vs idle containers (%s)</text>`+"\n", left, s.Date)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, h-bottom, w-right, h-bottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, h-bottom)
	for i := 0; i <= 4; i++ {
		kib := maxKiB * i / 4
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end">%d MiB</text>`+"\n", left-6, y(kib)+4, kib/1024)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.0f" x2="%d" y2="%.0f" stroke="#ddd"/>`+"\n", left, y(kib), w-right, y(kib))
	}
	for _, p := range s.Scale["tether"] {
		fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">%d</text>`+"\n", x(p.Containers), h-bottom+16, p.Containers)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">containers (one shim each)</text>`+"\n", (left+w-right)/2, h-12)
	colors := map[string]string{"tether": "#1f77b4", "runc-v2": "#d62728"}
	legend := top
	for _, name := range []string{"tether", "runc-v2"} {
		for _, pss := range []bool{false, true} {
			var pts []string
			for _, p := range s.Scale[name] {
				v := p.RSSKiB
				if pss {
					v = p.PSSKiB
				}
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.Containers), y(v)))
			}
			dash, label := "", name+" RSS"
			if pss {
				dash, label = ` stroke-dasharray="6,4"`, name+" PSS"
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", colors[name], dash, strings.Join(pts, " "))
			fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", w-right+10, legend, w-right+40, legend, colors[name], dash)
			fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", w-right+46, legend+4, label)
			legend += 20
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}
