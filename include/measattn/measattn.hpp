// measattn/measattn.hpp — the whole public API in one include.
#pragma once

#include "measattn/attention.hpp"
#include "measattn/communicator.hpp"
#include "measattn/error.hpp"
#include "measattn/flow.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/io.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/maxent.hpp"
#include "measattn/measure.hpp"
#include "measattn/misspec.hpp"
#include "measattn/status.hpp"
#include "measattn/threads.hpp"
#include "measattn/transformer.hpp"
#include "measattn/types.hpp"
#include "measattn/version.hpp"
#include "measattn/wasserstein.hpp"
