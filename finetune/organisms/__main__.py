import sys

from finetune.organisms import main

sys.exit(main())
