package registry

// criImages are the images the CRI suites pull (containerd's CRI
// integration suite, critest), each behaving like the original where the
// tests look: a real pause, web servers on their ports, images with users
// and groups, a no-new-privileges checker, a memory stressor.
func criImages(rootfs []entry, tools []byte, env []string) []imageSpec {
	bin := string(tools)
	with := func(extra ...entry) [][]entry { return [][]entry{rootfs, extra} }
	sh := imageConfig{Cmd: []string{"sh"}, Env: env}
	var images []imageSpec
	// The pod sandbox image: pause, alone.
	// Each tag is an image of its own, as upstream's are (critest removes
	// one by one registry's name and counts the tags left).
	for _, tag := range []string{"3.6", "3.9", "3.10.2"} {
		images = append(images, imageSpec{"pause-" + tag, imageConfig{Entrypoint: []string{"/pause"}, Env: env, WorkingDir: "/",
			Labels: map[string]string{"org.opencontainers.image.version": tag}},
			[][]entry{{file("pause", 0o755, bin)}},
			[]string{"k8s.gcr.io/pause:" + tag, "registry.k8s.io/pause:" + tag}})
	}
	// nginx: the default site on port 80, its pid in /var/run/nginx.pid.
	html := dir("usr/share/nginx/html/", 0o755)
	index := file("usr/share/nginx/html/index.html", 0o644, "<html><body><h1>Welcome to nginx!</h1></body></html>\n")
	nginx := func(port string) imageSpec {
		return imageSpec{"nginx-" + port, imageConfig{Cmd: []string{"nginx", "-port", port}, Env: env},
			with(dir("usr/share/nginx/", 0o755), html, index, file("usr/sbin/nginx", 0o755, bin), dir("run/", 0o755)), nil}
	}
	web := nginx("80")
	web.refs = []string{"registry.k8s.io/e2e-test-images/nginx:1.14-2", "ghcr.io/containerd/nginx:1.27.0"}
	hostnet := nginx("12003") // cri-tools' hostnet-nginx listens there
	hostnet.refs = []string{"gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest"}
	images = append(images, web, hostnet,
		// Apache httpd's default site on port 80 (busybox's httpd), its
		// start logged to stderr as Apache's is.
		imageSpec{"httpd", imageConfig{Cmd: []string{"httpd-foreground"}, Env: env},
			with(dir("usr/local/apache2/", 0o755), dir("usr/local/apache2/htdocs/", 0o755),
				dir("usr/local/bin/", 0o755), file("usr/local/bin/httpd-foreground", 0o755,
					"#!/bin/sh\necho \"httpd: AH00558: serving /usr/local/apache2/htdocs on port 80\" >&2\n"+
						"exec httpd -f -p 80 -h /usr/local/apache2/htdocs\n"),
				file("usr/local/apache2/htdocs/index.html", 0o644, "<html><body><h1>It works!</h1></body></html>\n")),
			[]string{"registry.k8s.io/e2e-test-images/httpd:2.4.39-4"}},
		// Prints its effective uid, set-uid root.
		imageSpec{"nonewprivs", imageConfig{Entrypoint: []string{"/usr/local/bin/nnp"}, Env: env},
			with(dir("usr/local/", 0o755), dir("usr/local/bin/", 0o755), file("usr/local/bin/nnp", 0o4755, bin)),
			[]string{"registry.k8s.io/e2e-test-images/nonewprivs:1.3"}},
		// A server on 8080 and stress(1).
		imageSpec{"resource-consumer", imageConfig{Entrypoint: []string{"/consumer"}, Env: env},
			with(file("consumer", 0o755, "#!/bin/sh\nexec httpd -f -p 8080 -h /\n"), file("usr/bin/stress", 0o755, bin)),
			[]string{"registry.k8s.io/e2e-test-images/resource-consumer:1.10"}},
	)
	// cri-tools' test images (its images/build script): busybox with a
	// user, or a marker file named after the image.
	const staging = "gcr.io/k8s-staging-cri-tools/"
	for name, user := range map[string]string{
		"test-image-user-uid": "1002", "test-image-user-username": "www-data",
		"test-image-user-uid-group": "1003:1004", "test-image-user-username-group": "www-data:1004",
	} {
		cfg := sh
		cfg.User = user
		images = append(images, imageSpec{name, cfg, [][]entry{rootfs}, []string{staging + name + ":latest"}})
	}
	predefined := sh
	predefined.User = "1000"
	images = append(images, imageSpec{"test-image-predefined-group", predefined,
		with(file("etc/passwd", 0o644, passwd+"default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"),
			file("etc/group", 0o644, group+"default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"),
			owned(dir("home/default-user/", 0o755), 1000, 1000)),
		[]string{staging + "test-image-predefined-group:latest"}})
	marker := func(name string, refs ...string) imageSpec {
		return imageSpec{"cri-tools-" + name, sh, with(file(name, 0o644, "")), refs}
	}
	for _, name := range []string{"test-image-1", "test-image-2", "test-image-3", "test-image-latest"} {
		images = append(images, marker(name, staging+name+":latest"))
	}
	images = append(images,
		marker("same-image", staging+"test-image-tags:1", staging+"test-image-tags:2", staging+"test-image-tags:3"),
		marker("test", staging+"test-image-tag:test"),
		marker("all", staging+"test-image-tag:all"))
	return images
}
