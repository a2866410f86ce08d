from rowembed.cli import main

raise SystemExit(main())
