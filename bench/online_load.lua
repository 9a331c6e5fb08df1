-- The online bench's load for wrk (Debian's wrk 4.1, LuaJIT): POST the body in BODY_FILE on
-- keep-alive connections, count the answers by status, and print one JSON line at the end.
--
-- RATE=0 (the default): closed loop, each connection sends its next request when its answer
-- came. RATE=N: an offered load of N requests a second in all. Each wrk thread hands out send
-- times (slots) on a fixed schedule to whichever of its connections is free, so the load does
-- not follow the server's pace as long as a connection is free for each slot; the slots a
-- connection took more than LATE_MS after their time are counted as late (the pool of
-- connections ran dry: the load was no longer open).

local ffi = require("ffi")
ffi.cdef([[
  typedef struct { long tv_sec; long tv_nsec; } timespec;
  int clock_gettime(int clock_id, timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local now_ts = ffi.new("timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

local function read_file(path)
  local file = assert(io.open(path, "rb"), "cannot read BODY_FILE " .. tostring(path))
  local text = file:read("*a")
  file:close()
  return text
end

-- BODY_FILE unset: a GET (a server's health route, its HTTP alone).
if os.getenv("BODY_FILE") then
  wrk.method = "POST"
  wrk.body = read_file(os.getenv("BODY_FILE"))
  wrk.headers["Content-Type"] = "application/json"
end

local rate = tonumber(os.getenv("RATE") or "0")
local threads_count = tonumber(os.getenv("THREADS") or "1")
local LATE_MS = 10

-- Each thread's own state (every thread runs this script in a Lua state of its own).
statuses = {}
late = 0
local interval_ms = rate > 0 and 1000 * threads_count / rate or 0
local next_slot = nil

if rate > 0 then
  function delay()
    local now = now_ms()
    next_slot = next_slot or now
    local wait = next_slot - now
    next_slot = next_slot + interval_ms
    if wait < -LATE_MS then
      late = late + 1
    end
    return wait > 0 and wait or 0
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- The main state: the threads, to collect their counts at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local counts, total_late, answered, refused = {}, 0, 0, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
      answered = answered + count
      if status == 429 then
        refused = refused + count
      end
    end
    total_late = total_late + thread:get("late")
  end
  -- The admitted answers' p99 from the latencies of all: if a share s of the answers were
  -- refused (429), the slowest 1% of the admitted are at most a share (1 - s) / 100 of all,
  -- so the latency at quantile 1 - (1 - s) / 100 of all bounds the admitted answers' p99.
  local admitted_share = answered > 0 and (answered - refused) / answered or 1
  local bound_quantile = 100 - admitted_share
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  local errors = summary.errors
  io.write(
    string.format(
      '{"requests": %d, "seconds": %.6f, "statuses": {%s}, "socket_errors": %d, '
        .. '"timeouts": %d, "p50_ms": %.4f, "p99_ms": %.4f, "admitted_p99_bound_ms": %.4f, '
        .. '"max_ms": %.4f, "late": %d}\n',
      summary.requests,
      summary.duration / 1e6,
      table.concat(parts, ", "),
      errors.connect + errors.read + errors.write,
      errors.timeout,
      latency:percentile(50) / 1000,
      latency:percentile(99) / 1000,
      latency:percentile(bound_quantile) / 1000,
      latency.max / 1000,
      total_late
    )
  )
end
