using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// Which I/O engine a listener runs on: io_uring on Linux when the probe passes (Auto), the sockets engine
/// when asked for, on Windows and Wine, or when the kernel refuses a ring; io_uring asked for and refused
/// fails the start with the option and the errno. Refusals are injected at the ring's setup call, where
/// a seccomp profile or kernel.io_uring_disabled would refuse it.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class EngineChoiceTests
{
    private const int EPERM = 1;

    [Fact]
    public async Task Auto_takes_io_uring_exactly_where_the_probe_passes_and_serves_on_it()
    {
        var probe = IoUringProbe.Run();
        await using var server = await SampleServer.StartAsync(configure: options => options.Engine = WinsockEngine.Auto);
        await server.GetPlaintextOnNewConnectionsAsync(200);

        var counters = server.Counters;
        Assert.Equal(probe.Passed ? WinsockEngine.IoUring : WinsockEngine.Sockets, counters.Engine);
        Assert.Equal(200, counters.ConnectionsAccepted);
        if (OperatingSystem.IsLinux())
        {
            Assert.Contains(probe.Reason, counters.EngineStatus, StringComparison.Ordinal);
        }
        else
        {
            Assert.False(probe.Passed);
            Assert.StartsWith("sockets: io_uring is Linux's", counters.EngineStatus, StringComparison.Ordinal);
        }

        TestContext.Current.SendDiagnosticMessage($"Auto: {counters.EngineStatus}");
    }

    [Fact]
    public async Task Sockets_asked_for_is_the_sockets_engine()
    {
        await using var server = await SampleServer.StartAsync(configure: options => options.Engine = WinsockEngine.Sockets);
        await server.GetPlaintextOnNewConnectionsAsync(50);
        Assert.Equal(WinsockEngine.Sockets, server.Counters.Engine);
        Assert.Equal("sockets: WinsockTransportOptions.Engine is Sockets", server.Counters.EngineStatus);
    }

    /// <summary>Whether this run is on Linux, the only platform with io_uring.</summary>
    public static bool IsLinux => OperatingSystem.IsLinux();

    /// <summary>Whether the io_uring engine can run in this process (the probe's verdict).</summary>
    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    [Fact(Skip = "io_uring is Linux's: elsewhere the probe never sets up a ring (it answers \"not Linux\").", SkipUnless = nameof(IsLinux))]
    public void A_refused_ring_setup_fails_the_probe_with_the_errno_and_its_likely_cause()
    {
        InjectRefusedSetup();
        try
        {
            var probe = IoUringProbe.Run();
            Assert.False(probe.Passed);
            Assert.Equal("io_uring_setup failed with EPERM (blocked: a seccomp profile such as Docker's default, or kernel.io_uring_disabled)", probe.Reason);
        }
        finally
        {
            Ring.SetupFault = null;
        }
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or the probe failed), so a refusal cannot be injected after a passing probe.", SkipUnless = nameof(IoUringRuns))]
    public async Task Auto_where_the_kernel_refuses_rings_falls_back_to_the_sockets_engine_and_says_why()
    {
        InjectRefusedSetup();
        try
        {
            await using var server = await SampleServer.StartAsync(configure: options => options.Engine = WinsockEngine.Auto);
            await server.GetPlaintextOnNewConnectionsAsync(50);
            Assert.Equal(WinsockEngine.Sockets, server.Counters.Engine);
            // The probe passed; the listener's own ring was refused (the injected EPERM).
            Assert.StartsWith("sockets: making the listener's io_uring ring 1 of ", server.Counters.EngineStatus, StringComparison.Ordinal);
            Assert.EndsWith("failed with EPERM", server.Counters.EngineStatus, StringComparison.Ordinal);
        }
        finally
        {
            Ring.SetupFault = null;
        }
    }

    [Fact]
    public async Task IoUring_asked_for_where_it_cannot_run_fails_the_start_naming_the_option_and_the_errno()
    {
        InjectRefusedSetup();
        try
        {
            var error = await Assert.ThrowsAsync<NotSupportedException>(async () =>
            {
                await using var server = await SampleServer.StartAsync(configure: options => options.Engine = WinsockEngine.IoUring);
            });
            Assert.Contains("WinsockTransportOptions.Engine is IoUring", error.Message, StringComparison.Ordinal);
            Assert.Contains(OperatingSystem.IsLinux() ? "EPERM" : "io_uring is Linux's", error.Message, StringComparison.Ordinal);
        }
        finally
        {
            Ring.SetupFault = null;
        }
    }

    // IORING_FEAT_CQE_SKIP (5.17), IORING_FEAT_EXT_ARG (5.11).
    private const uint FeatCqeSkip = 1u << 11;
    private const uint FeatExtArg = 1u << 8;
    private const int EINVAL = 22;

    [Theory(Skip = "io_uring cannot run in this process (not Linux, or the probe failed), so an older kernel's answers cannot be made to follow a passing probe.", SkipUnless = nameof(IoUringRuns))]
    [InlineData(FeatCqeSkip, "kernel older than 5.19: no IORING_FEAT_CQE_SKIP (5.17)")]
    [InlineData(FeatExtArg, "kernel older than 5.19: no IORING_FEAT_EXT_ARG (5.11)")]
    public void A_ring_without_a_feature_of_the_floor_fails_the_probe_with_the_floor(uint feature, string reason)
    {
        _ = IoUringProbe.Result;
        Ring.FeaturesFault = features => features & ~feature;
        try
        {
            var probe = IoUringProbe.Run();
            Assert.False(probe.Passed);
            Assert.Equal(reason, probe.Reason);
        }
        finally
        {
            Ring.FeaturesFault = null;
        }
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or the probe failed), so an older kernel's answers cannot be made to follow a passing probe.", SkipUnless = nameof(IoUringRuns))]
    public void A_setup_that_refuses_SUBMIT_ALL_as_5_15_does_fails_the_probe_with_the_floor()
    {
        // IORING_SETUP_SUBMIT_ALL: 5.10 and 5.15 answer EINVAL to it, and set up a plain ring.
        _ = IoUringProbe.Result;
        Ring.SetupFault = flags => (flags & (1u << 7)) != 0 ? EINVAL : 0;
        try
        {
            var probe = IoUringProbe.Run();
            Assert.False(probe.Passed);
            Assert.Equal("kernel older than 5.19: io_uring_setup refuses IORING_SETUP_SUBMIT_ALL (5.18)", probe.Reason);
        }
        finally
        {
            Ring.SetupFault = null;
        }
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or the probe failed), so an older kernel's answers cannot be made to follow a passing probe.", SkipUnless = nameof(IoUringRuns))]
    public void A_cancel_of_everything_refused_as_on_5_18_fails_the_probe_with_the_floor()
    {
        // 5.18 sets the ring up (SUBMIT_ALL) but refuses IORING_ASYNC_CANCEL_ANY | ALL with EINVAL, so every stop
        // would wait out its grace.
        _ = IoUringProbe.Result;
        IoUringProbe.ResultFault = (op, result) => op == "IORING_OP_ASYNC_CANCEL" ? -EINVAL : result;
        try
        {
            var probe = IoUringProbe.Run();
            Assert.False(probe.Passed);
            Assert.Equal("kernel older than 5.19: IORING_OP_ASYNC_CANCEL refuses IORING_ASYNC_CANCEL_ANY | ALL (5.19)", probe.Reason);
        }
        finally
        {
            IoUringProbe.ResultFault = null;
        }
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or the probe failed), so an older kernel's answers cannot be made to follow a passing probe.", SkipUnless = nameof(IoUringRuns))]
    public async Task Below_the_floor_Auto_falls_back_to_the_sockets_engine_and_IoUring_fails_the_start_both_naming_the_floor()
    {
        // The probe passed for the process; the listener's own rings report a kernel without CQE_SKIP.
        _ = IoUringProbe.Result;
        Ring.FeaturesFault = features => features & ~FeatCqeSkip;
        try
        {
            await using (var server = await SampleServer.StartAsync(configure: options => options.Engine = WinsockEngine.Auto))
            {
                await server.GetPlaintextOnNewConnectionsAsync(20);
                Assert.Equal(WinsockEngine.Sockets, server.Counters.Engine);
                Assert.EndsWith("was refused: kernel older than 5.19: no IORING_FEAT_CQE_SKIP (5.17)", server.Counters.EngineStatus, StringComparison.Ordinal);
            }

            var error = await Assert.ThrowsAsync<NotSupportedException>(async () =>
            {
                await using var server = await SampleServer.StartAsync(configure: options => options.Engine = WinsockEngine.IoUring);
            });
            Assert.Contains("WinsockTransportOptions.Engine is IoUring", error.Message, StringComparison.Ordinal);
            Assert.Contains("kernel older than 5.19: no IORING_FEAT_CQE_SKIP (5.17)", error.Message, StringComparison.Ordinal);
        }
        finally
        {
            Ring.FeaturesFault = null;
        }
    }

    /// <summary>
    /// Every ring setup from now on fails with EPERM. The process's probe verdict is taken first, so that
    /// the fault does not become the verdict cached for the tests that run after these.
    /// </summary>
    private static void InjectRefusedSetup()
    {
        _ = IoUringProbe.Result;
        Ring.SetupFault = _ => EPERM;
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or the probe failed: see the Auto test's diagnostic message).", SkipUnless = nameof(IoUringRuns))]
    public async Task Several_ring_threads_share_one_listener()
    {
        await using var server = await SampleServer.StartAsync(configure: options =>
        {
            options.Engine = WinsockEngine.IoUring;
            options.IoUringThreadCount = 3;
        });
        using var client = server.CreateKeepAliveClient();
        var responses = await Task.WhenAll(Enumerable.Range(0, 300).Select(_ => client.GetStringAsync(new Uri(server.BaseAddress, "/plaintext"))));
        Assert.All(responses, body => Assert.Equal("Hello, World!", body));
        await server.GetPlaintextOnNewConnectionsAsync(100);
        Assert.Equal(WinsockEngine.IoUring, server.Counters.Engine);
        Assert.EndsWith("3 ring threads", server.Counters.EngineStatus, StringComparison.Ordinal);
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or the probe failed: see the Auto test's diagnostic message).", SkipUnless = nameof(IoUringRuns))]
    public async Task Connections_of_one_listener_are_accepted_on_more_than_one_of_its_rings()
    {
        var rings = new System.Collections.Concurrent.ConcurrentDictionary<RingThread, int>();
        await using var server = await ConnectionServer.StartAsync(
            TransportKind.Winsock,
            async context =>
            {
                // The connection object is the transport's own: the ring that accepted it is its engine's.
                var ring = ((IoUringConnectionIo)((Transport.Winsock.Connections.WinsockConnection)context).Io).Ring;
                rings.AddOrUpdate(ring, 1, static (_, n) => n + 1);
                await context.Transport.Output.WriteAsync("ok"u8.ToArray());
            },
            options =>
            {
                options.Engine = WinsockEngine.IoUring;
                options.IoUringThreadCount = 3;
            });
        for (var i = 0; i < 60; i++)
        {
            using var socket = await RawClient.ConnectAsync(server.EndPoint);
            Assert.Equal("ok"u8.ToArray(), await RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(10)));
        }

        TestContext.Current.SendDiagnosticMessage($"connections per ring: {string.Join(", ", rings.Values)}");
        Assert.Equal(60, rings.Values.Sum());
        Assert.True(rings.Count >= 2, $"all 60 connections were accepted on one of the 3 rings");
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or the probe failed: see the Auto test's diagnostic message).", SkipUnless = nameof(IoUringRuns))]
    public async Task A_ring_thread_that_dies_is_logged_aborts_its_connections_and_its_listener_refuses_new_ones()
    {
        var log = new CapturedLog();
        var server = await SampleServer.StartAsync(
            configure: options =>
            {
                options.Engine = WinsockEngine.IoUring;
                // One ring, so that the one fault (which every ring meets) is one death.
                options.IoUringThreadCount = 1;
            },
            configureBuilder: builder => builder.Logging.AddProvider(log).AddFilter<CapturedLog>("Transport.Winsock", LogLevel.Trace));
        var ct = TestContext.Current.CancellationToken;
        using var open = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await open.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port), ct);
            // A keep-alive exchange first: the connection is up and stays open.
            await open.SendAsync("GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray(), SocketFlags.None, ct);
            var response = new List<byte>();
            var chunk = new byte[4096];
            while (!response.ToArray().AsSpan().EndsWith("Hello, World!"u8))
            {
                var read = await open.ReceiveAsync(chunk, SocketFlags.None, ct);
                Assert.True(read > 0, "the server closed a keep-alive connection");
                response.AddRange(chunk.AsSpan(0, read));
            }

            // The next time the ring thread enters the kernel, io_uring_enter fails: the thread dies.
            RingThread.EnterFault = () => 14; // EFAULT
            await open.SendAsync("GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray(), SocketFlags.None, ct);

            // Its connection ends (no response, an end of stream or a reset), never hangs.
            var buffer = new byte[4096];
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromSeconds(10));
            var ended = false;
            try
            {
                while (await open.ReceiveAsync(buffer, SocketFlags.None, timeout.Token) > 0)
                {
                }

                ended = true;
            }
            catch (SocketException)
            {
                ended = true;
            }

            Assert.True(ended);
            var died = Assert.Single(log.Entries, e => e.EventId.Id == 26);
            Assert.Equal(LogLevel.Critical, died.Level);
            Assert.Equal("RingThreadFailed", died.EventId.Name);

            // New clients are refused, not left in a backlog nobody accepts from.
            Assert.True(await Eventually.TrueAsync(() =>
            {
                using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                try
                {
                    probe.Connect(new IPEndPoint(IPAddress.Loopback, server.Port));
                    return false;
                }
                catch (SocketException ex)
                {
                    return ex.SocketErrorCode == SocketError.ConnectionRefused;
                }
            }, TimeSpan.FromSeconds(5)));
        }
        finally
        {
            RingThread.EnterFault = null;
        }

        // And the host still stops, within a bound.
        var stopping = server.DisposeAsync().AsTask();
        Assert.Same(stopping, await Task.WhenAny(stopping, Task.Delay(TimeSpan.FromSeconds(20), ct)));
        await stopping;
    }
}
