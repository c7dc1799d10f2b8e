using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.DependencyInjection;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Diagnostics;

public sealed class MeterTests
{
    [Fact]
    public async Task The_meter_reports_what_the_counters_say_and_times_each_recycle()
    {
        const int Requests = 50;
        await using var server = await SampleServer.StartAsync();
        var scope = server.App.Services.GetRequiredService<IMeterFactory>();
        var measurements = new ConcurrentDictionary<string, double>();
        var disconnects = new ConcurrentBag<(double Seconds, string? Outcome)>();

        using var listener = new MeterListener
        {
            // Only this host's meter: other tests' hosts publish the same names in parallel.
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == "Transport.Winsock" && ReferenceEquals(instrument.Meter.Scope, scope))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => measurements[Key(instrument, tags)] = value);
        listener.SetMeasurementEventCallback<int>((instrument, value, tags, _) => measurements[Key(instrument, tags)] = value);
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
            disconnects.Add((value, tags.Length > 0 ? tags[0].Value as string : null)));
        listener.Start();

        await server.GetPlaintextOnNewConnectionsAsync(Requests);

        // Let teardown settle before comparing snapshots: a close counts when our FIN leaves, its recycle
        // (and its timing) only after the peer's FIN.
        var counters = server.Counters;
        var recycles = counters.ReuseActive ? Requests : 0;
        Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses >= Requests && disconnects.Count >= recycles && counters.PendingDisconnects == 0, TimeSpan.FromSeconds(10)), Eventually.Describe(counters));
        listener.RecordObservableInstruments();

        Assert.Equal(counters.ConnectionsAccepted, measurements["winsock.connections.accepted"]);
        Assert.Equal(counters.SocketsCreated, measurements["winsock.sockets.accepted_into{winsock.socket.origin=created}"]);
        Assert.Equal(counters.SocketsReused, measurements["winsock.sockets.accepted_into{winsock.socket.origin=reused}"]);
        Assert.Equal(counters.GracefulCloses, measurements["winsock.connection.closes{winsock.close.kind=graceful}"]);
        Assert.Equal(0, measurements["winsock.connection.closes{winsock.close.kind=abortive}"]);
        Assert.Equal(counters.PooledSockets, measurements["winsock.sockets.pooled"]);
        Assert.Equal(counters.ReuseActive ? 1 : 0, measurements["winsock.reuse.active"]);

        if (counters.ReuseActive)
        {
            // Every connection that ended with FIN both ways was recycled, and each recycle was timed and
            // succeeded. (Recycled sockets may be pooled, reused, or waiting in a posted accept.)
            Assert.Equal(0, counters.DrainTimeouts);
            Assert.Equal(counters.GracefulCloses, disconnects.Count);
            Assert.All(disconnects, d => Assert.Equal("success", d.Outcome));
            Assert.All(disconnects, d => Assert.InRange(d.Seconds, 0, 2));
        }
        else
        {
            Assert.Empty(disconnects);
        }
    }

    private static string Key(Instrument instrument, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        => tags.Length == 0 ? instrument.Name : $"{instrument.Name}{{{tags[0].Key}={tags[0].Value}}}";
}
