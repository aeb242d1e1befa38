"""Starts a thread when imported: a zygote that preloads it must not fork (test_zygote)."""

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
