// measattn/measattn.hpp — the whole public API in one include.
#pragma once

#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/io.hpp"
#include "measattn/measure.hpp"
#include "measattn/types.hpp"
#include "measattn/version.hpp"
