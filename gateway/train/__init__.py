"""Training over HTTP: the routes (`routes`), POST /train's streamed multipart body (`multipart`), its form
turned into CreateJob messages (`form`) and streamed to trainer_svc (`upload`), the bodies (`responses`)."""
