#include "trace/trace-hw_dextlab.h"
