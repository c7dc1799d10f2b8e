using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Diagnostics;

public sealed class MeterTests
{
    [Fact]
    public async Task The_meter_reports_what_the_counters_say_and_times_each_recycle()
    {
        const int Recycled = 50;
        const int ServerFirst = 10;
        // Forced reuse where it works, so the recycling path runs on Linux too (through .NET's emulation);
        // a deferred FIN: HttpClient closes first (passive closes, recycled), and raw clients that wait
        // for the server's FIN get it after the deferral (active closes, TIME_WAIT here). The deferral is
        // long enough that a slow HttpClient close on a busy machine still comes first.
        await using var server = await SampleServer.StartAsync(configure: options =>
        {
            options.ReuseSockets = ReusePlatform.ForcedWhereItWorks;
            options.DeferFinTimeout = TimeSpan.FromSeconds(2);
        });
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
        {
            if (instrument.Name == "winsock.disconnect.duration")
            {
                disconnects.Add((value, tags.Length > 0 ? tags[0].Value as string : null));
            }
            else
            {
                measurements[Key(instrument, tags)] = value;
            }
        });
        listener.Start();

        await server.GetPlaintextOnNewConnectionsAsync(Recycled);
        await Task.WhenAll(Enumerable.Range(0, ServerFirst).Select(_ =>
            RawHttp.GetPlaintextAsync(new IPEndPoint(IPAddress.Loopback, server.Port), 1, clientClosesFirst: false)));

        // Let teardown settle before comparing snapshots: a recycle, and its timing, ends after the close.
        var counters = server.Counters;
        var recycles = counters.ReuseActive ? Recycled : 0;
        Assert.True(
            await Eventually.TrueAsync(
                () => counters.GracefulCloses == Recycled + ServerFirst && counters.TimeWaitCloses == ServerFirst && disconnects.Count >= recycles && counters.PendingDisconnects == 0,
                TimeSpan.FromSeconds(10)),
            Eventually.Describe(counters));
        listener.RecordObservableInstruments();

        Assert.Equal(counters.ConnectionsAccepted, measurements["winsock.connections.accepted"]);
        Assert.Equal(counters.SocketsCreated, measurements["winsock.sockets.accepted_into{winsock.socket.origin=created}"]);
        Assert.Equal(counters.SocketsReused, measurements["winsock.sockets.accepted_into{winsock.socket.origin=reused}"]);
        Assert.Equal(counters.GracefulCloses, measurements["winsock.connection.closes{winsock.close.kind=graceful}"]);
        Assert.Equal(0, measurements["winsock.connection.closes{winsock.close.kind=abortive}"]);
        Assert.Equal(ServerFirst, counters.TimeWaitCloses);
        Assert.Equal(ServerFirst, measurements["winsock.connection.closes{winsock.close.kind=time_wait}"]);
        Assert.Equal(ServerFirst, measurements["winsock.fin.deferred{winsock.fin.outcome=timeout}"]);
        Assert.Equal(Recycled, measurements["winsock.fin.deferred{winsock.fin.outcome=peer_closed_first}"]);
        Assert.Equal(counters.PooledSockets, measurements["winsock.sockets.pooled"]);
        Assert.Equal(recycles, counters.ReuseDisconnects);
        Assert.Equal(recycles, measurements["winsock.reuse.disconnects"]);
        Assert.Equal(0, measurements["winsock.reuse.accept_failures"]);
        Assert.Equal(counters.ReuseActive ? 1 : 0, measurements["winsock.reuse.active"]);
        Assert.Equal(0, measurements["winsock.accept.pauses"]);
        Assert.Equal(0, measurements["winsock.accept.paused_time"]);
        Assert.Equal(0, measurements["winsock.listeners.paused"]);

        // Every passive close was recycled, and each recycle was timed and succeeded; no active close was.
        // (Recycled sockets may be pooled, reused, or waiting in a posted accept.)
        Assert.Equal(recycles, disconnects.Count);
        Assert.All(disconnects, d => Assert.Equal("success", d.Outcome));
        Assert.All(disconnects, d => Assert.InRange(d.Seconds, 0, 2));
    }

    private static string Key(Instrument instrument, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        => tags.Length == 0 ? instrument.Name : $"{instrument.Name}{{{tags[0].Key}={tags[0].Value}}}";
}
