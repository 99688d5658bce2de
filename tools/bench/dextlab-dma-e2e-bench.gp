# gnuplot script for dextlab-dma-e2e-bench --data FILE (one data block per depth):
#   gnuplot -e "data='FILE'; out='docs/bench/dextlab-dma-e2e.png'" tools/bench/dextlab-dma-e2e-bench.gp
# Left: end-to-end throughput by request size, one line per depth, with the
# same-run memcpy baselines; right: the ratio, with the 0.6 target.
if (!exists("data")) data = 'dextlab-dma-e2e.dat'
if (!exists("out")) out = 'dextlab-dma-e2e.png'
if (!exists("note")) note = ''
set terminal pngcairo size 1400,560 font ",10"
set output out
set multiplot layout 1,2 title "dextlab-dma end to end: app -> driver -> device (qtest platform), COPY; ".note
set logscale x 2
set xlabel "request size"
set xtics ("4K" 4096, "16K" 16384, "64K" 65536, "256K" 262144, "1M" 1048576, "4M" 4194304, "16M" 16777216)
set grid
set key top left
set ylabel "MiB/s"
set logscale y 10
depths = "1 4 16 64"
plot for [i=0:3] data index i using 1:3 with linespoints lw 2 title "driver, depth ".word(depths, i+1), \
     for [i=0:3] data index i using 1:4 with lines dt 2 lc i+1 title "memcpy, depth-".word(depths, i+1)." buffers"
set ylabel "driver / memcpy (same buffers, same run)"
plot for [i=0:3] data index i using 1:5 with linespoints lw 2 title "depth ".word(depths, i+1), \
     0.6 with lines lc rgb "red" dt 2 title "target 0.6"
unset multiplot
