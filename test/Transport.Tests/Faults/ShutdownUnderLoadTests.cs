using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelApp;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Faults;

/// <summary>
/// Stopping the host while 32 clients hammer it: every request either completes with the right body or
/// fails as a connection failure, none hangs, the stop finishes, and no socket outlives the server.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class ShutdownUnderLoadTests
{
    private const int Clients = 32;
    private const int MaxRequestsPerClient = 100_000;
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(30);

    [Fact(SkipUnless = nameof(ProcessSockets.IsSupported), SkipType = typeof(ProcessSockets), Skip = ProcessSockets.Unsupported)]
    public async Task Stop_under_load_ends_every_request_correctly_or_as_a_connection_failure_and_leaks_no_sockets()
    {
        var baseline = ProcessSockets.Count();
        var server = await SampleServer.StartAsync();
        var serverCounters = server.Counters;
        var clients = new List<HttpClient>();
        var wrong = new ConcurrentQueue<string>();
        var completed = new long[Clients];
        var failed = new long[Clients];
        var stopped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            for (var i = 0; i < Clients; i++)
            {
                // Half keep their connection alive across requests, half open a new one per request.
                var client = i % 2 == 0 ? server.CreateKeepAliveClient(maxConnections: 1) : server.CreateClosingClient();
                client.Timeout = RequestTimeout;
                clients.Add(client);
            }

            var loops = clients.Select((client, i) => Task.Run(() => LoopAsync(client, i, completed, failed, wrong, stopped.Task))).ToArray();
            await Task.Delay(TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken);
            Assert.All(completed, (count, i) => Assert.True(Interlocked.Read(ref completed[i]) > 0, $"client {i} completed nothing before the stop"));

            using (var stopBound = new CancellationTokenSource(TimeSpan.FromSeconds(10)))
            {
                await server.App.StopAsync(stopBound.Token).WaitAsync(Bounded, TestContext.Current.CancellationToken);
            }

            stopped.SetResult();
            await Task.WhenAll(loops).WaitAsync(Bounded, TestContext.Current.CancellationToken);

            Assert.True(wrong.IsEmpty, $"{wrong.Count} requests went wrong, e.g. {string.Join(" | ", wrong.Take(5))}");
            // Every client went on until the stop and then, on its next request, found the server gone.
            Assert.All(failed, (count, i) => Assert.True(Interlocked.Read(ref failed[i]) > 0, $"client {i} never saw a connection failure"));
            var counters = server.Counters;
            Assert.True(await Eventually.TrueAsync(() => counters.PendingDisconnects == 0 && counters.PooledSockets == 0, TimeSpan.FromSeconds(10)), Eventually.Describe(counters));
            // A graceful stop that finished within its bound aborted nothing: every close was a FIN.
            Assert.Equal(0, counters.AbortiveCloses);
            TestContext.Current.SendDiagnosticMessage(
                $"shutdown under load: {completed.Sum()} completed, {failed.Sum()} connection failures; {Eventually.Describe(counters)}");
        }
        finally
        {
            stopped.TrySetResult();
            foreach (var client in clients)
            {
                client.Dispose();
            }

            await server.DisposeAsync();
        }

        var remaining = await ProcessSockets.WaitForAtMostAsync(baseline, TimeSpan.FromSeconds(10));
        Assert.True(remaining <= baseline, $"{remaining} sockets open after shutdown, {baseline} before the server started: {ProcessSockets.Describe()}; {Eventually.Describe(serverCounters)}");
    }

    private static async Task LoopAsync(HttpClient client, int id, long[] completed, long[] failed, ConcurrentQueue<string> wrong, Task stopped)
    {
        var ct = TestContext.Current.CancellationToken;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        for (var n = 0; n < MaxRequestsPerClient && DateTime.UtcNow < deadline; n++)
        {
            // Once the stop has finished, one more request: it must fail as a connection failure.
            var last = stopped.IsCompleted;
            try
            {
                if (n % 2 == 0)
                {
                    var body = await client.GetByteArrayAsync("/plaintext", ct);
                    Check(body.AsSpan().SequenceEqual(SampleHost.PlaintextBody), $"client {id} request {n}: /plaintext returned {body.Length} bytes '{Encoding.ASCII.GetString(body)}'");
                }
                else
                {
                    // Big enough to span several reads and writes, so a cut-off echo would show.
                    var payload = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat($"client {id} request {n};", 2000)));
                    using var content = new ByteArrayContent(payload);
                    using var response = await client.PostAsync("/echo", content, ct);
                    var echoed = await response.Content.ReadAsByteArrayAsync(ct);
                    Check(response.StatusCode == HttpStatusCode.OK && echoed.AsSpan().SequenceEqual(payload), $"client {id} request {n}: /echo returned {response.StatusCode} with {echoed.Length} of {payload.Length} bytes");
                }

                Interlocked.Increment(ref completed[id]);
                Check(!last, $"client {id} request {n} succeeded after the stop had finished");
            }
            catch (Exception ex) when (IsConnectionFailure(ex))
            {
                Interlocked.Increment(ref failed[id]);
            }
            catch (Exception ex) when (ex is TaskCanceledException && !ct.IsCancellationRequested)
            {
                wrong.Enqueue($"client {id} request {n} hung past {RequestTimeout.TotalSeconds} s");
            }

            if (last)
            {
                return;
            }
        }

        wrong.Enqueue($"client {id} never reached the end of the stop");

        void Check(bool condition, string message)
        {
            if (!condition)
            {
                wrong.Enqueue(message);
            }
        }
    }

    private static bool IsConnectionFailure(Exception ex)
        => ex is HttpRequestException or IOException or SocketException;
}
