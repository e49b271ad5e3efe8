// Builds the native addon when binding.gyp is present. Owned by the native addon work (see native/README.md).
import { existsSync } from 'node:fs';
if (!existsSync(new URL('../binding.gyp', import.meta.url))) process.exit(0);
