"""Takes seconds to import: a zygote that preloads it is still starting (test_zygote)."""

import time

time.sleep(3)
