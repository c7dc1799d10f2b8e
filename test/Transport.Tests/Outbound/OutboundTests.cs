using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Outbound;

/// <summary>
/// The outbound side against real Kestrel servers on 127.0.0.1: HttpClient through
/// <see cref="WinsockReuse.CreateConnectCallback(WinsockOutboundConnectionFactory)"/>, and the
/// <see cref="IConnectionFactory"/> itself. The server the clients churn against closes after every
/// response (the requests say <c>Connection: close</c>), so whether the client's TIME_WAIT stays off the
/// client is the deferred FIN's doing.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class OutboundTests
{
    // Under Wine each request costs several times more; the count there still shows the behaviour.
    private static int ChurnRequests => WinePlatform.IsWine ? 2_000 : 20_000;

    public static bool CountsTimeWait => TimeWaitSockets.IsSupported;

    public static bool CountsSockets => ProcessSockets.IsSupported;

    [Fact]
    public async Task Churn_through_HttpClient_with_the_deferred_fin_fails_nothing_and_leaves_the_time_wait_on_the_server()
    {
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, DeferFinTimeout = TimeSpan.FromSeconds(2) });
        var before = CountsTimeWait ? TimeWaitSockets.CountWithRemotePort(server.Port) : 0;

        await ChurnAsync(server, factory, ChurnRequests);

        var counters = factory.Counters;
        Assert.True(
            await Eventually.TrueAsync(() => counters.GracefulCloses == ChurnRequests, TimeSpan.FromSeconds(20)),
            Describe(counters));
        Assert.Equal(ChurnRequests, counters.Connects);
        Assert.Equal(0, counters.ConnectFailures);
        Assert.Equal(ChurnRequests, counters.SocketsCreated);
        Assert.Equal(0, counters.ConnectionResets + counters.AbortiveCloses);
        // The server closed first every time (it closes after each response), seen by the deferral: no
        // deferral ran out, and no FIN of the client's went first.
        Assert.Equal(ChurnRequests, counters.PeerClosedFirst);
        Assert.Equal(0, counters.DeferFinTimeouts);
        Assert.True(counters.TimeWaitCloses <= ChurnRequests / 100, Describe(counters));
        if (CountsTimeWait)
        {
            var timeWait = TimeWaitSockets.CountWithRemotePort(server.Port) - before;
            TestContext.Current.SendDiagnosticMessage($"deferred FIN on: {timeWait} client TIME_WAIT entries for {ChurnRequests} requests; {Describe(counters)}");
            Assert.True(timeWait <= ChurnRequests / 100, $"{timeWait} client TIME_WAIT entries for {ChurnRequests} requests");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Against_a_server_that_waits_for_the_client_to_close_every_close_is_the_clients_and_counted(bool deferFin)
    {
        // The server answers, then reads to the client's FIN before it ends: the client always closes first.
        const int Requests = 200;
        await using var server = await ConnectionServer.StartAsync(TransportKind.Sockets, static async context =>
        {
            var input = context.Transport.Input;
            while (true)
            {
                var result = await input.ReadAsync();
                var headersEnd = result.Buffer.PositionOf((byte)'\n');
                input.AdvanceTo(result.Buffer.End);
                if (headersEnd is not null || result.IsCompleted)
                {
                    break;
                }
            }

            await context.Transport.Output.WriteAsync("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"u8.ToArray());
            while (!(await input.ReadAsync()).IsCompleted)
            {
            }
        });
        // Reuse forced on: a socket this side closed first is in TIME_WAIT, and must never be recycled.
        var options = new WinsockOutboundOptions { Engine = OutboundEngine.Current, DeferFinTimeout = deferFin ? TimeSpan.FromMilliseconds(100) : TimeSpan.Zero, ReuseSockets = true };
        await using var factory = new WinsockOutboundConnectionFactory(options);
        var before = CountsTimeWait ? TimeWaitSockets.CountWithRemotePort(server.EndPoint.Port) : 0;
        using (var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) }))
        {
            var next = 0;
            await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
            {
                while (Interlocked.Increment(ref next) <= Requests)
                {
                    Assert.Equal("ok", await client.GetStringAsync($"http://127.0.0.1:{server.EndPoint.Port}/", TestContext.Current.CancellationToken));
                }
            })));
        }

        var counters = factory.Counters;
        Assert.True(
            await Eventually.TrueAsync(() => counters.GracefulCloses == Requests && counters.TimeWaitCloses == Requests, TimeSpan.FromSeconds(20)),
            Describe(counters));
        // With the deferral on, each connection waited its bounded time for a server that never closes first.
        Assert.Equal(deferFin ? Requests : 0, counters.DeferFinTimeouts);
        Assert.Equal(0, counters.PeerClosedFirst);
        Assert.Equal(0, counters.ReuseDisconnects);
        Assert.Equal(0, counters.SocketsReused);
        Assert.Equal(Requests, counters.SocketsCreated);
        if (CountsTimeWait)
        {
            var timeWait = TimeWaitSockets.CountWithRemotePort(server.EndPoint.Port) - before;
            TestContext.Current.SendDiagnosticMessage($"deferred FIN {(deferFin ? "on" : "off")}, server waits: {timeWait} client TIME_WAIT entries for {Requests} requests; {Describe(counters)}");
            // Never more than counted. Fewer can show: with tcp_tw_reuse, a later connect to the same port may
            // take over an entry more than a second old (on a busy machine, a good share of them).
            Assert.InRange(timeWait, Requests / 10, Requests);
        }
    }

    [Fact]
    public async Task Keep_alive_requests_64_at_once_carry_large_bodies_both_ways_intact()
    {
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) }) { BaseAddress = server.BaseAddress };
        var ct = TestContext.Current.CancellationToken;

        await Task.WhenAll(Enumerable.Range(0, 64).Select(async i =>
        {
            var body = RandomNumberGenerator.GetBytes(256 * 1024 + i);
            using var response = await client.PostAsync("/echo", new ByteArrayContent(body), ct);
            response.EnsureSuccessStatusCode();
            Assert.Equal(body, await response.Content.ReadAsByteArrayAsync(ct));
        }));

        Assert.InRange(factory.Counters.Connects, 1, 64);
        Assert.Equal(0, factory.Counters.ConnectionResets);
    }

    [Fact]
    public async Task HTTP2_over_cleartext_multiplexes_concurrent_requests_on_its_connection()
    {
        // gRPC's shape: HTTP/2 with prior knowledge, many streams on one connection.
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(static kestrel => kestrel.Listen(IPAddress.Loopback, 0, static listen => listen.Protocols = Microsoft.AspNetCore.Server.Kestrel.Core.HttpProtocols.Http2));
        await using var app = builder.Build();
        app.MapGet("/", static () => "h2");
        await app.StartAsync(TestContext.Current.CancellationToken);
        var address = app.Urls.Single();
        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) })
        {
            DefaultRequestVersion = HttpVersion.Version20,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

        var responses = await Task.WhenAll(Enumerable.Range(0, 32).Select(async _ =>
        {
            using var response = await client.GetAsync(address, TestContext.Current.CancellationToken);
            return (response.Version, Body: await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        }));

        Assert.All(responses, static r => Assert.Equal((HttpVersion.Version20, "h2"), r));
        Assert.InRange(factory.Counters.Connects, 1, 2);
        client.Dispose();
        // HttpClient's dispose disposes the connection's stream with its read loop pending: it ends gracefully.
        Assert.True(await Eventually.TrueAsync(() => factory.Counters.GracefulCloses == factory.Counters.Connects, TimeSpan.FromSeconds(10)), Describe(factory.Counters));
    }

    [Fact]
    public async Task A_request_canceled_mid_body_ends_its_connection()
    {
        await using var server = await ConnectionServer.StartAsync(TransportKind.Sockets, static async context =>
        {
            var result = await context.Transport.Input.ReadAsync();
            context.Transport.Input.AdvanceTo(result.Buffer.End);
            // Headers and a little of a long body, then nothing: the client gives up during the body.
            await context.Transport.Output.WriteAsync("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"u8.ToArray().Concat(new byte[100]).ToArray());
            while (!(await context.Transport.Input.ReadAsync()).IsCompleted)
            {
            }
        });
        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) });
        using var cancel = new CancellationTokenSource();
        using var response = await client.GetAsync($"http://127.0.0.1:{server.EndPoint.Port}/", HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        var body = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken);
        var buffer = new byte[4096];
        Assert.True(await body.ReadAsync(buffer, TestContext.Current.CancellationToken) > 0);
        var pending = body.ReadAsync(buffer, cancel.Token).AsTask();
        cancel.CancelAfter(100);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => pending);
        response.Dispose();
        Assert.True(await Eventually.TrueAsync(() => factory.Counters.GracefulCloses + factory.Counters.AbortiveCloses == 1, TimeSpan.FromSeconds(10)), Describe(factory.Counters));
    }

    [Fact]
    public async Task A_server_that_resets_mid_response_gives_HttpClient_its_usual_HttpRequestException()
    {
        await using var server = await ConnectionServer.StartAsync(TransportKind.Sockets, static async context =>
        {
            var result = await context.Transport.Input.ReadAsync();
            context.Transport.Input.AdvanceTo(result.Buffer.End);
            await context.Transport.Output.WriteAsync("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"u8.ToArray().Concat(new byte[1000]).ToArray());
            await Task.Delay(100);
            context.Abort(new ConnectionAbortedException("the test resets"));
        });
        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) });

        await Assert.ThrowsAnyAsync<HttpRequestException>(() => client.GetByteArrayAsync($"http://127.0.0.1:{server.EndPoint.Port}/", TestContext.Current.CancellationToken));
        Assert.True(
            await Eventually.TrueAsync(() => factory.Counters.ConnectionResets == 1, TimeSpan.FromSeconds(10)),
            Describe(factory.Counters));
    }

    [Fact]
    public async Task Connecting_to_a_closed_port_fails_fast_with_connection_refused()
    {
        var port = ClosedPort();
        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) });
        var started = DateTime.UtcNow;

        var http = await Assert.ThrowsAsync<HttpRequestException>(() => client.GetAsync($"http://127.0.0.1:{port}/", TestContext.Current.CancellationToken));
        Assert.Equal(SocketError.ConnectionRefused, Assert.IsType<SocketException>(http.InnerException).SocketErrorCode);
        Assert.Equal(HttpRequestError.ConnectionError, http.HttpRequestError);
        var direct = await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), TestContext.Current.CancellationToken).AsTask());
        Assert.Equal(SocketError.ConnectionRefused, direct.SocketErrorCode);

        // Windows itself retries a refused SYN twice (about a second each); Linux and Wine refuse at once.
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(10), $"took {DateTime.UtcNow - started}");
        Assert.Equal(2, factory.Counters.ConnectFailures);
        Assert.Equal(0, factory.Counters.Connects);
    }

    public static bool DropsSynsOnAFullBacklog => !OperatingSystem.IsWindows() || WinePlatform.IsWine;

    [Fact(Skip = "Windows answers a connect to a listener whose backlog is full with an RST, so no connect waits to time out.", SkipUnless = nameof(DropsSynsOnAFullBacklog))]
    public async Task A_connect_that_gets_no_answer_fails_after_ConnectTimeout_with_timed_out()
    {
        // A listener whose accept queue is full: the kernel drops further SYNs, so a connect waits.
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var target = (IPEndPoint)listener.LocalEndPoint!;
        var open = new List<ConnectionContext>();
        try
        {
            await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ConnectTimeout = TimeSpan.FromMilliseconds(300) });
            SocketException? timedOut = null;
            // Fill the queue until a connect no longer completes at once.
            for (var i = 0; i < 8 && timedOut is null; i++)
            {
                try
                {
                    open.Add(await factory.ConnectAsync(target, TestContext.Current.CancellationToken));
                }
                catch (SocketException ex)
                {
                    timedOut = ex;
                }
            }

            Assert.NotNull(timedOut);
            Assert.Equal(SocketError.TimedOut, timedOut.SocketErrorCode);
            Assert.Contains("WinsockOutboundOptions.ConnectTimeout", timedOut.Message, StringComparison.Ordinal);
            Assert.Equal(1, factory.Counters.ConnectFailures);

            // The caller's cancellation, before a ConnectTimeout that has not run out, is the caller's: its
            // exception carries the caller's token, which is how SocketsHttpHandler tells it from a failure.
            await using var patient = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ConnectTimeout = TimeSpan.FromSeconds(30) });
            using var caller = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
            caller.CancelAfter(TimeSpan.FromMilliseconds(200));
            var canceled = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => patient.ConnectAsync(new DnsEndPoint("127.0.0.1", target.Port), caller.Token).AsTask());
            Assert.Equal(caller.Token, canceled.CancellationToken);
            Assert.Equal(1, patient.Counters.ConnectFailures);
        }
        finally
        {
            // The queued connections are reset by the listener's close; theirs then end at once.
            listener.Dispose();
            foreach (var connection in open)
            {
                await connection.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task A_stream_disposed_with_a_read_pending_cancels_the_read_and_still_ends_with_a_fin()
    {
        var serverSawEnd = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await ConnectionServer.StartAsync(TransportKind.Sockets, async context =>
        {
            // Nothing is sent: the client's read stays pending until its dispose. Then the client's FIN.
            while (true)
            {
                var result = await context.Transport.Input.ReadAsync();
                context.Transport.Input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    serverSawEnd.TrySetResult(true);
                    return;
                }
            }
        });
        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        var stream = new Transport.Winsock.Outbound.ConnectionStream(await factory.ConnectAsync(server.EndPoint, TestContext.Current.CancellationToken));
        var read = stream.ReadAsync(new byte[16], TestContext.Current.CancellationToken).AsTask();
        await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.False(read.IsCompleted);

        stream.Dispose();

        await Assert.ThrowsAsync<ObjectDisposedException>(() => read.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken));
        Assert.True(await serverSawEnd.Task.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.True(await Eventually.TrueAsync(() => factory.Counters.GracefulCloses == 1, TimeSpan.FromSeconds(10)), Describe(factory.Counters));
        Assert.Equal(0, factory.Counters.AbortiveCloses);
    }

    // 32 MiB, far more than loopback's socket buffers hold, written into the pipe without a flush: the
    // send side gets it all at the dispose and cannot finish sending it to a peer that never reads.
    private static void FillUnflushed(PipeWriter output)
    {
        for (var i = 0; i < 512; i++)
        {
            output.GetSpan(64 * 1024)[..(64 * 1024)].Fill((byte)'x');
            output.Advance(64 * 1024);
        }
    }

    [NotUnderWineFact(WinePlatform.SendNotEndedByClose)]
    public async Task A_disposed_connection_whose_server_never_reads_is_aborted_after_DrainTimeout()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await ConnectionServer.StartAsync(TransportKind.Sockets, async context =>
        {
            // Never reads: the client's output fills the socket buffers and stops.
            await release.Task;
        });
        try
        {
            await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, DrainTimeout = TimeSpan.FromSeconds(1) });
            var connection = await factory.ConnectAsync(server.EndPoint, TestContext.Current.CancellationToken);
            FillUnflushed(connection.Transport.Output);

            var started = DateTime.UtcNow;
            var disposal = connection.DisposeAsync().AsTask();
            var ended = await Task.WhenAny(disposal, Task.Delay(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken)) == disposal;
            Assert.True(ended, $"the dispose did not end within 20 s; {Describe(factory.Counters)}");
            TestContext.Current.SendDiagnosticMessage($"disposed in {DateTime.UtcNow - started}; {Describe(factory.Counters)}");
            Assert.Equal(1, factory.Counters.AbortiveCloses);
            Assert.Equal(0, factory.Counters.GracefulCloses);
        }
        finally
        {
            release.TrySetResult();
        }
    }

    [NotUnderWineFact(WinePlatform.SendNotEndedByClose)]
    public async Task A_disposed_connection_whose_server_sends_its_fin_but_never_reads_is_still_aborted_after_DrainTimeout()
    {
        // The peer's FIN ends the receive side while the output is stuck: that must not take the dispose's
        // bound away (it once disarmed it, and the dispose then never ended).
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, DrainTimeout = TimeSpan.FromSeconds(1) });
        var connection = await factory.ConnectAsync(listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        using var server = await listener.AcceptAsync(TestContext.Current.CancellationToken);
        FillUnflushed(connection.Transport.Output);

        var started = DateTime.UtcNow;
        var disposal = connection.DisposeAsync().AsTask();
        // The server's FIN after the dispose has armed its bound; the server reads nothing, ever.
        await Task.Delay(200, TestContext.Current.CancellationToken);
        server.Shutdown(SocketShutdown.Send);
        var ended = await Task.WhenAny(disposal, Task.Delay(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken)) == disposal;
        Assert.True(ended, $"the dispose did not end within 20 s; {Describe(factory.Counters)}");
        TestContext.Current.SendDiagnosticMessage($"disposed in {DateTime.UtcNow - started}; {Describe(factory.Counters)}");
        Assert.Equal(1, factory.Counters.AbortiveCloses);
        Assert.Equal(0, factory.Counters.GracefulCloses);
    }

    [Fact]
    public async Task The_factory_connects_to_ip_and_dns_endpoints_and_refuses_other_kinds_by_name()
    {
        await using var server = await ConnectionServer.StartAsync(TransportKind.Sockets, static async context =>
        {
            var result = await context.Transport.Input.ReadAtLeastAsync(5);
            var request = result.Buffer.ToArray();
            context.Transport.Input.AdvanceTo(result.Buffer.End);
            await context.Transport.Output.WriteAsync(request);
        });
        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        var ct = TestContext.Current.CancellationToken;

        foreach (EndPoint endPoint in new EndPoint[] { server.EndPoint, new DnsEndPoint("localhost", server.EndPoint.Port) })
        {
            var connection = await factory.ConnectAsync(endPoint, ct);
            await using (connection)
            {
                Assert.Equal(server.EndPoint.Port, ((IPEndPoint)connection.RemoteEndPoint!).Port);
                await connection.Transport.Output.WriteAsync("hello"u8.ToArray(), ct);
                var read = await connection.Transport.Input.ReadAtLeastAsync(5, ct);
                Assert.Equal("hello"u8.ToArray(), read.Buffer.ToArray());
                connection.Transport.Input.AdvanceTo(read.Buffer.End);
            }
        }

        var pipe = await Assert.ThrowsAsync<NotSupportedException>(() => factory.ConnectAsync(new NamedPipeEndPoint("winsock-test"), ct).AsTask());
        Assert.Contains("NamedPipeEndPoint", pipe.Message, StringComparison.Ordinal);
        Assert.Equal(2, factory.Counters.Connects);
    }

    [Fact(Skip = ProcessSockets.Unsupported, SkipUnless = nameof(CountsSockets))]
    public async Task Its_connections_ended_and_the_factory_disposed_no_socket_is_left_open()
    {
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        var before = ProcessSockets.Count();
        var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        using (var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) }) { BaseAddress = server.BaseAddress })
        {
            await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => client.GetStringAsync("/plaintext", TestContext.Current.CancellationToken)));
        }

        await factory.DisposeAsync();
        // The server's side of each connection is in this process too: both close.
        var after = await ProcessSockets.WaitForAtMostAsync(before, TimeSpan.FromSeconds(10));
        Assert.True(after <= before, $"{after} sockets open, {before} before: {ProcessSockets.Describe()}");
        await Assert.ThrowsAsync<ObjectDisposedException>(() => factory.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port), TestContext.Current.CancellationToken).AsTask());
    }

    [Fact]
    public async Task Bad_options_fail_at_construction_and_at_host_start_naming_the_option()
    {
        var ex = Assert.Throws<ArgumentException>(() => new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, DeferFinTimeout = TimeSpan.FromSeconds(10) }));
        Assert.Contains("WinsockOutboundOptions.DeferFinTimeout must be between zero (off) and 00:00:05; it was 00:00:10.", ex.Message, StringComparison.Ordinal);
        ex = Assert.Throws<ArgumentException>(() => new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, MaxPooledSockets = -1, DisconnectTimeout = TimeSpan.Zero, MaxPendingDisconnects = 0 }));
        Assert.Contains("WinsockOutboundOptions.MaxPooledSockets must be between 0 and 65536; it was -1.", ex.Message, StringComparison.Ordinal);
        Assert.Contains("WinsockOutboundOptions.DisconnectTimeout must be more than zero and at most 00:05:00; it was 00:00:00.", ex.Message, StringComparison.Ordinal);
        Assert.Contains("WinsockOutboundOptions.MaxPendingDisconnects must be between 1 and 65536; it was 0.", ex.Message, StringComparison.Ordinal);

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddWinsockReuseConnectionFactory(options => options.ConnectTimeout = TimeSpan.Zero);
        await using var app = builder.Build();
        var failure = await Assert.ThrowsAsync<OptionsValidationException>(() => app.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("WinsockOutboundOptions.ConnectTimeout", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_registered_factory_is_the_hosts_connection_factory_and_its_counters()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Services.AddWinsockReuseConnectionFactory();
        await using var app = builder.Build();
        var factory = app.Services.GetRequiredService<WinsockOutboundConnectionFactory>();
        Assert.Same(factory, app.Services.GetRequiredService<IConnectionFactory>());
        Assert.Same(factory.Counters, app.Services.GetRequiredService<WinsockOutboundCounters>());
    }

    [Fact]
    public async Task The_sample_calls_itself_through_the_factory_and_shows_it_under_outbound_in_stats()
    {
        await using var server = await SampleServer.StartAsync();
        using var client = new HttpClient { BaseAddress = server.BaseAddress };
        var ct = TestContext.Current.CancellationToken;

        using (var result = System.Text.Json.JsonDocument.Parse(await client.GetStringAsync("/outbound?count=20", ct)))
        {
            Assert.Equal(20, result.RootElement.GetProperty("requests").GetInt32());
        }

        using var stats = System.Text.Json.JsonDocument.Parse(await client.GetStringAsync("/stats", ct));
        var outbound = stats.RootElement.GetProperty("outbound");
        Assert.Equal(20, outbound.GetProperty("connects").GetInt64());
        Assert.Equal(0, outbound.GetProperty("connectFailures").GetInt64());
        // The sample defers the client's FIN, and its own server closes after each Connection: close response.
        var counters = server.App.Services.GetRequiredService<WinsockOutboundCounters>();
        Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses == 20 && counters.PeerClosedFirst == 20, TimeSpan.FromSeconds(10)), Describe(counters));
        using var tooMany = await client.GetAsync("/outbound?count=1000", ct);
        Assert.Equal(HttpStatusCode.BadRequest, tooMany.StatusCode);
    }

    [Fact]
    public async Task The_meter_reports_connects_sockets_closes_and_deferred_fins_under_winsock_outbound()
    {
        using var meters = new OneMeterFactory();
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, DeferFinTimeout = TimeSpan.FromSeconds(2), ReuseSockets = true, DisconnectTimeout = TimeSpan.FromMilliseconds(200) }, meterFactory: meters);
        // The failed connect first: one after the churn could take a recycled socket, which a failed
        // connect closes (no socket is used again after one), and the socket count below would be one short.
        await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(new IPEndPoint(IPAddress.Loopback, ClosedPort()), TestContext.Current.CancellationToken).AsTask());
        await ChurnAsync(server, factory, 10);
        // Every disconnect over (under Wine each one times out), so the gauges hold still while they are read.
        Assert.True(await Eventually.TrueAsync(() => factory.Counters.GracefulCloses == 10 && factory.Counters.PeerClosedFirst == 10 && factory.Counters.PendingDisconnects == 0, TimeSpan.FromSeconds(10)), Describe(factory.Counters));

        var seen = new Dictionary<string, long>();
        using (var listener = new System.Diagnostics.Metrics.MeterListener())
        {
            listener.InstrumentPublished = (instrument, l) =>
            {
                if (ReferenceEquals(instrument.Meter, meters.Meter))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            };
            listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            {
                var tag = tags.Length == 1 ? $"{tags[0].Value}" : "";
                seen[$"{instrument.Name}/{tag}"] = value;
            });
            listener.Start();
            listener.RecordObservableInstruments();
        }

        Assert.Equal(10, seen["winsock.outbound.connects/connected"]);
        Assert.Equal(1, seen["winsock.outbound.connects/failed"]);
        // Reuse forced on: whether a connect found a recycled socket depends on timing, but the instruments
        // read what the counters say, and every connect had one socket or the other.
        var c = factory.Counters;
        Assert.Equal(c.SocketsCreated, seen["winsock.outbound.sockets/created"]);
        Assert.Equal(c.SocketsReused, seen["winsock.outbound.sockets/reused"]);
        Assert.Equal(10, seen["winsock.outbound.sockets/created"] + seen["winsock.outbound.sockets/reused"]);
        Assert.Equal(c.PooledSockets, seen["winsock.outbound.sockets.pooled/"]);
        Assert.Equal(c.PendingDisconnects, seen["winsock.outbound.sockets.disconnecting/"]);
        Assert.Equal(0, seen["winsock.outbound.sockets.disconnecting/"]);
        // Every socket made is now pooled, or was closed when its reuse disconnect timed out or failed.
        Assert.Equal(c.SocketsCreated, seen["winsock.outbound.sockets.pooled/"] + c.DisconnectTimeouts + c.DisconnectFailures);
        Assert.Equal(10, seen["winsock.outbound.closes/graceful"]);
        Assert.Equal(0, seen["winsock.outbound.closes/time_wait"]);
        Assert.Equal(10, seen["winsock.outbound.fin.deferred/peer_closed_first"]);
        Assert.Equal(0, seen["winsock.outbound.fin.deferred/timeout"]);
    }

    /// <summary>Hands out one meter and keeps it, so a listener can tell this factory's instruments from the rest of the process's.</summary>
    private sealed class OneMeterFactory : System.Diagnostics.Metrics.IMeterFactory
    {
        public System.Diagnostics.Metrics.Meter? Meter { get; private set; }

        public System.Diagnostics.Metrics.Meter Create(System.Diagnostics.Metrics.MeterOptions options) => Meter = new System.Diagnostics.Metrics.Meter(options);

        public void Dispose() => Meter?.Dispose();
    }

    private static async Task ChurnAsync(SampleServer server, WinsockOutboundConnectionFactory factory, int requests)
    {
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) }) { BaseAddress = server.BaseAddress };
        client.DefaultRequestHeaders.ConnectionClose = true;
        var next = 0;
        await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            while (Interlocked.Increment(ref next) <= requests)
            {
                Assert.Equal("Hello, World!", await client.GetStringAsync("/plaintext", TestContext.Current.CancellationToken));
            }
        })));
    }

    private static int ClosedPort()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    private static string Describe(WinsockOutboundCounters c)
        => $"connects={c.Connects} connectFailures={c.ConnectFailures} created={c.SocketsCreated} graceful={c.GracefulCloses} abortive={c.AbortiveCloses} resets={c.ConnectionResets} timeWaitCloses={c.TimeWaitCloses} peerClosedFirst={c.PeerClosedFirst} deferFinTimeouts={c.DeferFinTimeouts} drainTimeouts={c.DrainTimeouts}";
}
