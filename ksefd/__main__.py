from ksefd.cli import main

raise SystemExit(main())
