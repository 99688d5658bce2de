# gnuplot script for dextlab-dma-e2e-bench --data FILE:
#   gnuplot -e "data='FILE'; out='docs/bench/dextlab-dma-e2e.png'" tools/bench/dextlab-dma-e2e-bench.gp
# Left: end-to-end throughput by request size, one line per depth, with the
# same-run memcpy baseline; right: the ratio, with the 0.6 target.
if (!exists("data")) data = 'dextlab-dma-e2e.dat'
if (!exists("out")) out = 'dextlab-dma-e2e.png'
set terminal pngcairo size 1400,560 font ",10"
set output out
set multiplot layout 1,2 title "dextlab-dma end to end: app -> dextlab-dma driver -> device (qtest platform), COPY"
set logscale x 2
set xlabel "request size (bytes)"
set format x "%.0s%cB"
set grid
set key top left
set ylabel "MiB/s"
# data blocks are sizes; select a depth with the ternary
plot for [d in "1 4 16 64"] data using 1:($2==d+0 ? $3 : 1/0) with linespoints title sprintf("driver, depth %s", d), \
     data using 1:($2==1 ? $4 : 1/0) with lines dt 2 lc rgb "black" title "memcpy (same run, depth-1 working set)", \
     data using 1:($2==64 ? $4 : 1/0) with lines dt 3 lc rgb "gray40" title "memcpy (same run, depth-64 working set)"
set ylabel "driver / memcpy"
set logscale y 10
set key top left
plot for [d in "1 4 16 64"] data using 1:($2==d+0 ? $5 : 1/0) with linespoints title sprintf("depth %s", d), \
     0.6 with lines lc rgb "red" dt 2 title "target 0.6"
unset multiplot
