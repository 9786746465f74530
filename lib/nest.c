/*
 * Deadline inheritance: a call made inside fn ends, its grace period
 * included, before the call it runs in reaches its own deadline, so that fn
 * gets the inner call's TBX_ETIMEDOUT back while it still has time to react
 * and return a result of its own.
 *
 * The inner call's budget is what the outer call has left (tbx_remaining())
 * less a margin for fn to react (a tenth of it, at most 50 ms).  Its grace
 * is cut to half the budget if it is longer, and its timeout is capped at
 * the budget less that grace, unless it asked for less.  A capped deadline
 * counts the inner child's start-up (a hard deadline): a soft one would
 * start later than the budget allows.
 */
#include "engine.h"

#include <math.h>

#define NEST_MARGIN_S 0.050
/* A timeout that is there but already spent: the call ends at once with
 * TBX_ETIMEDOUT (0 would mean no deadline). */
#define NEST_SPENT_S 1e-9

void tbx__nest_cap(tbx_opts *o)
{
    double left = tbx_remaining();
    if (left == HUGE_VAL)
        return; /* not inside a call with a deadline */
    double margin = left / 10 < NEST_MARGIN_S ? left / 10 : NEST_MARGIN_S;
    double budget = left - margin;
    if (o->grace_s > budget / 2)
        o->grace_s = budget / 2;
    double cap = budget - o->grace_s;
    o->hard_timeout = 1;
    if (o->timeout_s <= 0 || o->timeout_s > cap)
        o->timeout_s = cap > NEST_SPENT_S ? cap : NEST_SPENT_S;
}
