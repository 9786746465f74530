#define _GNU_SOURCE
#include "helpers.h"
