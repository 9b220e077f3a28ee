# Draw mmipc-bench results: round-trip latency distributions (W1) and
# streaming throughput by message size (W2), as one SVG.
#
#   gnuplot -e "csv='bench-results.csv'; out='bench/results.svg'" bench/plot.gp
#
# The CSV is what `mmipc-bench --csv FILE` writes, one series per row:
#   workload,transport,size,metric,unit,median,min,max,runs,quantile
# (quantile is set on latency rows only: 0 = min, 0.5 = p50, ..., 1 = max).

if (!exists("csv")) csv = "bench-results.csv"
if (!exists("out")) out = "bench/results.svg"

set datafile separator ","
set terminal svg size 1280,960 dynamic font "sans,11" background "white"
set termoption noenhanced
set output out

# One colour per transport, the same in every panel; mmipc drawn heavier.
ALL = " mmipc mmipc-sleep mmipc-zc pipe socketpair posix-mq zmq-reqrep zmq-pushpull spsc-ring memcpy mmipc-pinned pipe-pinned "
ci(t) = words(ALL[1:strstrt(ALL, " ".t." ")]) + 1
set linetype 1 lc rgb "#d62728" lw 3 pt 7 ps 0.6
set linetype 2 lc rgb "#ff7f0e" lw 2 pt 7 ps 0.6
set linetype 3 lc rgb "#8c564b" lw 2 pt 7 ps 0.6
set linetype 4 lc rgb "#1f77b4" lw 1.5 pt 5 ps 0.5
set linetype 5 lc rgb "#17becf" lw 1.5 pt 5 ps 0.5
set linetype 6 lc rgb "#2ca02c" lw 1.5 pt 5 ps 0.5
set linetype 7 lc rgb "#9467bd" lw 1.5 pt 9 ps 0.6
set linetype 8 lc rgb "#9467bd" lw 1.5 pt 9 ps 0.6
set linetype 9 lc rgb "#7f7f7f" lw 1.5 pt 13 ps 0.6
set linetype 10 lc rgb "#000000" lw 1 pt 1 ps 0.6
set linetype 11 lc rgb "#d62728" lw 1.5 dt 2 pt 6 ps 0.6
set linetype 12 lc rgb "#1f77b4" lw 1.5 dt 2 pt 4 ps 0.6
set linetype cycle 12

W1 = "mmipc mmipc-sleep pipe socketpair posix-mq zmq-reqrep spsc-ring"
W1PIN = "mmipc-pinned pipe-pinned"
W2 = "mmipc mmipc-zc pipe socketpair posix-mq zmq-pushpull spsc-ring memcpy"

# Percentiles on a "nines" axis: p50 -> 0.3, p90 -> 1, p99 -> 2, p99.9 -> 3; max at 5.
nines(q) = q >= 1 ? 5 : (q <= 0 ? 0 : -log10(1 - q))
is_lat(t, s) = strcol(1) eq "W1" && strcol(2) eq t && column(3) == s && strcol(10) ne ""
is_w2(t, m) = strcol(1) eq "W2" && strcol(2) eq t && strcol(4) eq m

set multiplot layout 2,2 title "mmipc-bench: medians of interleaved runs (W2 bars: min-max)"

set grid
set key top left reverse Left samplen 2 font ",9"
set logscale y
set xrange [-0.2:5.2]
set xtics ("min" 0, "p50" 0.301, "p90" 1, "p99" 2, "p99.9" 3, "p99.99" 4, "max" 5)
set ylabel "round trip (microseconds, log)"

set title "W1 ping-pong round trip, 64 B (dashed: both processes on one CPU)"
plot for [t in W1." ".W1PIN] csv using (is_lat(t, 64) ? nines(column(10)) : NaN):6 \
     with linespoints lt ci(t) title t

set title "W1 ping-pong round trip, 4 KiB"
plot for [t in W1] csv using (is_lat(t, 4096) ? nines(column(10)) : NaN):6 \
     with linespoints lt ci(t) title t

set logscale xy 2
set logscale y 10
set xrange [40:1700000]
set xtics ("64 B" 64, "1 KiB" 1024, "64 KiB" 65536, "1 MiB" 1048576)
set xlabel "message size"

set title "W2 one-way stream 1 -> 1: bandwidth (key: right panel)"
set ylabel "MB/s (log)"
unset key
plot for [t in W2] csv using (is_w2(t, "MB_per_s") ? column(3) : NaN):6:7:8 \
     with yerrorlines lt ci(t) title t

set title "W2 one-way stream 1 -> 1: message rate"
set ylabel "messages/s (log)"
set key top right noreverse Right
plot for [t in W2] csv using (is_w2(t, "msgs_per_s") ? column(3) : NaN):6:7:8 \
     with yerrorlines lt ci(t) title t

unset multiplot
