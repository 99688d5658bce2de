/* libdext: everything a driver needs. */
#ifndef DEXT_DEXT_H
#define DEXT_DEXT_H
#include "dext/log.h"
#include "dext/queue.h"
#include "dext/service.h"
#include "dext/pci.h"
#include "dext/memory.h"
#include "dext/userclient.h"
#endif
