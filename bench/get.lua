-- wrk script for GET endpoints (the framework's ceiling on this machine).
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
