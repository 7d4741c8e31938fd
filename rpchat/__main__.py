from rpchat.cli import main

raise SystemExit(main())
