package results

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/tether-shim/tether/integration/bench/procmem"
)

// The targets (issue 19), in MiB above the floor or as ratios to
// runc-v2.
const (
	rssOverFloorMiB  = 0.6
	anonOverFloorMiB = 0.25
	pssRatio         = 0.6
	growthPercent    = 10
	podPSSRatio      = 0.5
	podStartRatio    = 0.6
)

// Markdown renders the samples as results.md.
func Markdown(s *Samples) string {
	var b strings.Builder
	fmt.Fprintf(&b, "tether vs containerd-shim-runc-v2, %s, %s\n", s.Date, s.Machine)
	idleTable(&b, s)
	floorTable(&b, s)
	growthTable(&b, s)
	densityTable(&b, s)
	speedTable(&b, s)
	podTable(&b, s)
	upgradeLine(&b, s)
	b.WriteString("\n")
	keys := make([]string, 0, len(s.Versions))
	for k := range s.Versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "- %s: %s\n", k, s.Versions[k])
	}
	return b.String()
}

// table writes a Markdown table's header.
func table(b *strings.Builder, title string, cols ...string) {
	fmt.Fprintf(b, "\n%s\n\n| %s |\n|---|%s\n", title, strings.Join(cols, " | "), strings.Repeat("---:|", len(cols)-1))
}

func row(b *strings.Builder, cells ...string) {
	fmt.Fprintf(b, "| %s |\n", strings.Join(cells, " | "))
}

// mib renders KiB as MiB.
func mib(kib float64) string { return fmt.Sprintf("%.2f", kib/1024) }

// signedMiB renders a difference in KiB as MiB with its sign.
func signedMiB(kib float64) string { return fmt.Sprintf("%+.2f", kib/1024) }

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// idleTable is the idle memory per shim, each figure three ways: absolute,
// against runc-v2 and against the floor.
func idleTable(b *strings.Builder, s *Samples) {
	if len(s.Idle) == 0 {
		return
	}
	n := len(s.Idle[0].Processes[Tether])
	table(b, fmt.Sprintf("Idle memory per shim, MiB (median over %d shims with one idle container each, and as many floor processes)", n),
		"figure", "tether", "runc-v2", "floor", "tether/runc-v2", "tether − floor", "target", "met")
	for _, idle := range s.Idle {
		for _, f := range []procmem.Field{procmem.RSS, procmem.PSS, procmem.Anon} {
			t, r, fl := procmem.Median(idle.Processes[Tether], f), procmem.Median(idle.Processes[Runc], f), procmem.Median(idle.Processes[Floor], f)
			var goal string
			var met bool
			switch f {
			case procmem.RSS:
				goal, met = fmt.Sprintf("≤ floor + %.2f", rssOverFloorMiB), t-fl <= rssOverFloorMiB*1024
			case procmem.PSS:
				goal, met = fmt.Sprintf("≤ %.1f× runc-v2", pssRatio), ratio(t, r) <= pssRatio
			case procmem.Anon:
				goal, met = fmt.Sprintf("≤ floor + %.2f", anonOverFloorMiB), t-fl <= anonOverFloorMiB*1024
			}
			row(b, fmt.Sprintf("idle %s, %s", f, idle.Age), mib(t), mib(r), mib(fl), fmt.Sprintf("%.2f", ratio(t, r)), signedMiB(t-fl), goal, yesNo(met))
		}
	}
}

// floorTable shows the floor programs, each age.
func floorTable(b *strings.Builder, s *Samples) {
	if len(s.Idle) == 0 {
		return
	}
	table(b, "The floor, MiB (median; every program built as tether is: static, stripped, -trimpath)",
		"program", "age", "RSS", "PSS", "anon")
	names := map[string]string{
		Floor:      "floor: idle ttrpc server with the task API (v2, v3) registered",
		FloorTTRPC: "idle ttrpc server, no service",
		GoSleep:    "Go program that only sleeps",
	}
	for _, p := range []string{Floor, FloorTTRPC, GoSleep} {
		for _, idle := range s.Idle {
			us := idle.Processes[p]
			row(b, names[p], idle.Age, mib(procmem.Median(us, procmem.RSS)), mib(procmem.Median(us, procmem.PSS)), mib(procmem.Median(us, procmem.Anon)))
		}
	}
}

// growthTable is one idle shim per runtime before and after work.
func growthTable(b *strings.Builder, s *Samples) {
	t, r := s.Growth[Tether], s.Growth[Runc]
	if t == nil || r == nil {
		return
	}
	fl := Usage(s, Floor)
	table(b, fmt.Sprintf("No growth under work, MiB: one shim per runtime, idle, before and after %s", t.Work),
		"figure", "tether", "runc-v2", "floor", "tether/runc-v2", "tether − floor", "target", "met")
	growth := func(g *Growth, f procmem.Field) float64 {
		return 100 * (float64(f.Of(g.After)) - float64(f.Of(g.Before))) / float64(f.Of(g.Before))
	}
	for _, f := range []procmem.Field{procmem.RSS, procmem.PSS, procmem.Anon} {
		tb, rb, ta, ra := float64(f.Of(t.Before)), float64(f.Of(r.Before)), float64(f.Of(t.After)), float64(f.Of(r.After))
		floor, over := floorCells(fl, f, 1, tb)
		row(b, fmt.Sprintf("idle %s before", f), mib(tb), mib(rb), floor, fmt.Sprintf("%.2f", ratio(tb, rb)), over, "", "")
		goal, met := "", ""
		if f != procmem.PSS { // PSS moves with the number of shims sharing the binary
			goal, met = fmt.Sprintf("≤ +%d %%", growthPercent), yesNo(growth(t, f) <= growthPercent)
		}
		floor, over = floorCells(fl, f, 1, ta)
		row(b, fmt.Sprintf("idle %s after", f), fmt.Sprintf("%s (%+.0f %%)", mib(ta), growth(t, f)), fmt.Sprintf("%s (%+.0f %%)", mib(ra), growth(r, f)),
			floor, fmt.Sprintf("%.2f", ratio(ta, ra)), over, goal, met)
	}
}

// Usage is the first idle sample of the process p ("start").
func Usage(s *Samples, p string) []procmem.Usage {
	if len(s.Idle) == 0 {
		return nil
	}
	return s.Idle[0].Processes[p]
}

// densityTable is the total memory of the largest number of idle
// containers and of idle pods, against as many floor processes.
func densityTable(b *strings.Builder, s *Samples) {
	type series struct {
		what   string
		points map[string][]ScalePoint
	}
	var all []series
	if len(s.Containers) > 0 {
		all = append(all, series{"containers (their shims)", s.Containers})
	}
	if t, r := s.Pods[Tether], s.Pods[Runc]; t != nil && r != nil && len(t.Scale) > 0 {
		all = append(all, series{"pods, one container each (shim + pause or holder)", map[string][]ScalePoint{Tether: t.Scale, Runc: r.Scale}})
	}
	if len(all) == 0 {
		return
	}
	table(b, "Density, MiB: total memory of the runtime processes of idle containers and pods (floor: as many floor processes, from the idle medians)",
		"figure", "tether", "runc-v2", "floor", "tether/runc-v2", "tether − floor")
	fl := Usage(s, Floor)
	for _, se := range all {
		n := 0
		for _, p := range se.points[Tether] {
			n = max(n, p.N)
		}
		t, _ := at(se.points[Tether], n)
		r, _ := at(se.points[Runc], n)
		for _, f := range []procmem.Field{procmem.RSS, procmem.PSS, procmem.Anon} {
			tf, rf := float64(f.Of(t.Total)), float64(f.Of(r.Total))
			floor, over := floorCells(fl, f, n, tf)
			row(b, fmt.Sprintf("%s of %d idle %s", f, n, se.what), mib(tf), mib(rf), floor, fmt.Sprintf("%.2f", ratio(tf, rf)), over)
		}
	}
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1)+0.5)]
}

// num renders a figure with three significant digits or so.
func num(x float64) string {
	if x >= 100 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

// target is a goal for a ratio tether/runc-v2: at most lim, or at least.
type target struct {
	max bool
	lim float64
}

func (t *target) cells(r float64) (string, string) {
	if t == nil {
		return "", ""
	}
	if t.max {
		return fmt.Sprintf("≤ %.1f", t.lim), yesNo(r <= t.lim)
	}
	return fmt.Sprintf("≥ %.1f", t.lim), yesNo(r >= t.lim)
}

// ratioRow is a figure of both runtimes with its ratio and target.
func ratioRow(b *strings.Builder, name, unit string, t, r float64, tgt *target) {
	goal, met := tgt.cells(ratio(t, r))
	row(b, name, num(t)+" "+unit, num(r)+" "+unit, fmt.Sprintf("%.2f", ratio(t, r)), goal, met)
}

func speedTable(b *strings.Builder, s *Samples) {
	if len(s.Lifecycle) == 0 && len(s.Exec) == 0 && len(s.Stdout) == 0 {
		return
	}
	table(b, "Speed", "figure", "tether", "runc-v2", "tether/runc-v2", "target", "met")
	if len(s.Lifecycle) > 0 {
		ratioRow(b, "lifecycle `ctr run --rm` p50", "ms", percentile(s.Lifecycle[Tether], 0.5), percentile(s.Lifecycle[Runc], 0.5), &target{true, 0.9})
		ratioRow(b, "lifecycle `ctr run --rm` p95", "ms", percentile(s.Lifecycle[Tether], 0.95), percentile(s.Lifecycle[Runc], 0.95), nil)
		ratioRow(b, fmt.Sprintf("shim CPU over %d lifecycles", len(s.Lifecycle[Tether])), "ms", s.CPU[Tether], s.CPU[Runc], &target{true, 0.7})
	}
	if len(s.Exec) > 0 {
		ratioRow(b, "exec `ctr task exec` p50", "ms", percentile(s.Exec[Tether], 0.5), percentile(s.Exec[Runc], 0.5), &target{true, 0.9})
		ratioRow(b, "exec `ctr task exec` p95", "ms", percentile(s.Exec[Tether], 0.95), percentile(s.Exec[Runc], 0.95), nil)
	}
	if len(s.Stdout) > 0 {
		ratioRow(b, "stdout throughput", "MB/s", s.Stdout[Tether], s.Stdout[Runc], &target{false, 1.0})
	}
}

// podTable is the pod figures: start, and each idle pod's runtime
// processes, three ways.
func podTable(b *strings.Builder, s *Samples) {
	t, r := s.Pods[Tether], s.Pods[Runc]
	if t == nil || r == nil {
		return
	}
	table(b, fmt.Sprintf("Pods (containerd 2.x CRI): tether holding the pod itself against runc-v2 with a pause container; memory in MiB, median over %d idle pods", len(t.Idle)),
		"figure", "tether", "runc-v2", "floor", "tether/runc-v2", "tether − floor", "target", "met")
	timing := func(name string, tv, rv float64, tgt *target) {
		goal, met := tgt.cells(ratio(tv, rv))
		row(b, name, num(tv)+" ms", num(rv)+" ms", "", fmt.Sprintf("%.2f", ratio(tv, rv)), "", goal, met)
	}
	timing("CRI RunPodSandbox p50", percentile(t.RunPodSandboxMs, 0.5), percentile(r.RunPodSandboxMs, 0.5), nil)
	timing("CRI RunPodSandbox p95", percentile(t.RunPodSandboxMs, 0.95), percentile(r.RunPodSandboxMs, 0.95), nil)
	timing("pod start to first container running p50", percentile(t.FirstContainerMs, 0.5), percentile(r.FirstContainerMs, 0.5), &target{true, podStartRatio})
	timing("pod start to first container running p95", percentile(t.FirstContainerMs, 0.95), percentile(r.FirstContainerMs, 0.95), nil)
	var tCount, rCount []float64
	for _, p := range t.Idle {
		tCount = append(tCount, float64(len(p.Others)))
	}
	for _, p := range r.Idle {
		rCount = append(rCount, float64(len(p.Others)))
	}
	row(b, "processes per pod besides its shim", num(percentile(tCount, 0.5)), num(percentile(rCount, 0.5)), "", "", "", "", "")
	podMemoryRows(b, Usage(s, Floor), "at start", t.Idle, r.Idle, t.Steady == nil)
	if t.Steady != nil && r.Steady != nil {
		podMemoryRows(b, Usage(s, Floor), "after "+t.SteadyAge, t.Steady, r.Steady, true)
	}
	if sp := s.Pods[TetherSharedPid]; sp != nil && sp.Steady != nil && r.Steady != nil {
		table(b, "A tether pod whose containers share one pid namespace keeps a holder (its init); against the same runc-v2 pods, MiB",
			"figure", "tether (shared pid)", "runc-v2", "floor", "tether/runc-v2", "tether − floor", "target", "met")
		podMemoryRows(b, Usage(s, Floor), "after "+sp.SteadyAge, sp.Steady, r.Steady, false)
	}
}

// podMemoryRows are idle pods' memory, three ways, with the target on PSS
// if asked.
func podMemoryRows(b *strings.Builder, fl []procmem.Usage, age string, t, r []PodMemory, withTarget bool) {
	totals := func(ps []PodMemory) (total, others []procmem.Usage) {
		for _, p := range ps {
			total, others = append(total, p.Total()), append(others, procmem.Total(p.Others))
		}
		return total, others
	}
	tTotal, tOthers := totals(t)
	rTotal, rOthers := totals(r)
	for _, f := range []procmem.Field{procmem.RSS, procmem.PSS, procmem.Anon} {
		tf, rf := procmem.Median(tTotal, f), procmem.Median(rTotal, f)
		goal, met := "", ""
		if f == procmem.PSS && withTarget {
			goal, met = (&target{true, podPSSRatio}).cells(ratio(tf, rf))
		}
		floor, over := floorCells(fl, f, 1, tf)
		row(b, fmt.Sprintf("idle pod %s, %s: shim + pause or holder", f, age), mib(tf), mib(rf), floor, fmt.Sprintf("%.2f", ratio(tf, rf)), over, goal, met)
		row(b, fmt.Sprintf("of which pause or holder %s, %s", f, age), mib(procmem.Median(tOthers, f)), mib(procmem.Median(rOthers, f)), "", "", "", "", "")
	}
}

// floorCells are the floor's figure f for n processes (from the idle
// medians) and how far tether's figure t is above it; blank without a
// floor sample.
func floorCells(floor []procmem.Usage, f procmem.Field, n int, t float64) (string, string) {
	if len(floor) == 0 {
		return "", ""
	}
	fl := float64(n) * procmem.Median(floor, f)
	return mib(fl), signedMiB(t - fl)
}

// upgradeLine is the live upgrade's part of the report.
func upgradeLine(b *strings.Builder, s *Samples) {
	if len(s.UpgradePauseMs) == 0 {
		return
	}
	text := fmt.Sprintf("\nLive upgrade (tether only: containerd's runc shim has none), %d upgrades of one shim with a busy container:"+
		" pause p50 %s ms, p99 %s ms, max %s ms (target: p99 ≤ 50 ms).\n",
		len(s.UpgradePauseMs), num(percentile(s.UpgradePauseMs, 0.5)), num(percentile(s.UpgradePauseMs, 0.99)), num(percentile(s.UpgradePauseMs, 1)))
	if p := s.StormUpgradePauseMs; len(p) > 0 {
		text += fmt.Sprintf("\nThe same during an exec storm (%d `ctr task exec` at a time, each printing %d KiB to a client that reads about 4 MiB/s;"+
			" %d execs, %d failed), %d upgrades: pause p50 %s ms, p99 %s ms, max %s ms.",
			s.StormConcurrency, StormOutput>>10, s.StormExecs, s.StormExecsFailed, len(p),
			num(percentile(p, 0.5)), num(percentile(p, 0.99)), num(percentile(p, 1)))
		var why []string
		for reason, n := range s.StormGivenUp {
			why = append(why, fmt.Sprintf("%d × %s", n, reason))
		}
		sort.Strings(why)
		if len(why) > 0 {
			text += " Tries given up (requests not answered within the bound) and tried again: " + strings.Join(why, "; ") + "."
		}
		text += "\n"
	}
	b.WriteString(text)
}

// StormOutput is what each exec of the upgrade's storm prints: more than a
// pipe and a fifo hold, so its client's reading paces it, and some is left
// in the fifo when it exits.
const StormOutput = 512 << 10
