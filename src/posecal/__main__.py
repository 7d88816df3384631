from posecal.cli import main

raise SystemExit(main())
