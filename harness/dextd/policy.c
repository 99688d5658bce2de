/*
 * dextd's default relaunch policy (the hook is DextdRelaunchPolicy in
 * daemon.h; the reliability work replaces it).  Pure: unit-tested.
 */
#include "daemon.h"

DextdRelaunch dextd_default_relaunch_policy(const DextdEndInfo *info, void *opaque)
{
    DextdRelaunch r = { false, 0, NULL };
    if (info->shutting_down) {
        r.why = "dextd is shutting down";
    } else if (info->reason == DEXTD_END_EXITED) {
        r.why = "clean exit";
    } else if (info->recent_crashes >= 5) {
        r.why = "5 abnormal ends within 60 s: giving up";
    } else {
        r.relaunch = true;
        r.delay_ms = MIN(100u << MIN(info->recent_crashes ? info->recent_crashes - 1 : 0, 6),
                         5000u);
        r.why = "abnormal end: relaunch with backoff";
    }
    return r;
}
